//! Issue 4: downloads that cannot be corrupted and survive failures. Each test provokes the
//! failure for real: holders that lie, stall, die (their whole runtime dropped, sockets and all),
//! a downloader killed mid-way, a tracker restarted.

mod common;

use common::{content, names_in, seeded_dir, IsolatedPeer, TestPeer, TestTracker};
use p2pshare::chunking::ContentId;
use p2pshare::pb::peer as pb;
use p2pshare::pb::peer::peer_server::{Peer, PeerServer};
use p2pshare::pb::tracker as tpb;
use p2pshare::peer::download::{Destination, DownloadError, DownloadRequest, Progress};
use p2pshare::peer::server::{PeerService, RateLimiter, ServeLimits};
use p2pshare::peer::store::Store;
use p2pshare::peer::{PeerConfig, PeerNode};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

const MIB: usize = 1 << 20;

/// Polls `check` every 50 ms until it holds or `limit` passes; returns whether it held.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Checks `check` every 50 ms for `limit`; returns whether it held every time.
async fn always<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !check().await {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

/// The content ids the tracker lists for `name`.
async fn versions(tracker: &TestTracker, name: &str) -> Vec<String> {
    match tracker
        .client()
        .who_has(tpb::WhoHasRequest {
            name: name.into(),
            content_id_prefix: String::new(),
            ..Default::default()
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .versions
            .into_iter()
            .map(|v| v.content_id)
            .collect(),
        Err(s) if s.code() == tonic::Code::NotFound => vec![],
        Err(s) => panic!("WhoHas failed: {s}"),
    }
}

async fn holders(tracker: &TestTracker, name: &str) -> Vec<String> {
    match tracker
        .client()
        .who_has(tpb::WhoHasRequest {
            name: name.into(),
            content_id_prefix: String::new(),
            ..Default::default()
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .versions
            .into_iter()
            .flat_map(|v| v.holders.into_iter().map(|h| h.peer_id))
            .collect(),
        Err(s) if s.code() == tonic::Code::NotFound => vec![],
        Err(s) => panic!("WhoHas failed: {s}"),
    }
}

/// How a [`FaultyHolder`] misbehaves in `GetBlocks`.
#[derive(Clone, Copy)]
enum Fault {
    /// Flips a byte in every message.
    Corrupt,
    /// Sends this many messages, then nothing, forever, without closing.
    StallAfter(usize),
    /// Sends this many messages, then fails the stream.
    FailAfter(usize),
}

/// A real Peer service whose block streams misbehave; file info and manifests are honest.
#[derive(Clone)]
struct FaultyHolder {
    inner: PeerService,
    fault: Fault,
}

type Blocks = Pin<Box<dyn Stream<Item = Result<pb::GetBlocksResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for FaultyHolder {
    async fn get_file_info(
        &self,
        r: Request<pb::GetFileInfoRequest>,
    ) -> Result<Response<pb::GetFileInfoResponse>, Status> {
        self.inner.get_file_info(r).await
    }
    async fn get_manifest(
        &self,
        r: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        self.inner.get_manifest(r).await
    }
    async fn get_pieces(
        &self,
        r: Request<pb::GetPiecesRequest>,
    ) -> Result<Response<pb::GetPiecesResponse>, Status> {
        self.inner.get_pieces(r).await
    }
    async fn get_holders(
        &self,
        r: Request<pb::GetHoldersRequest>,
    ) -> Result<Response<pb::GetHoldersResponse>, Status> {
        self.inner.get_holders(r).await
    }
    type GetBlocksStream = Blocks;
    async fn get_blocks(
        &self,
        r: Request<pb::GetBlocksRequest>,
    ) -> Result<Response<Blocks>, Status> {
        let honest = self.inner.get_blocks(r).await?.into_inner();
        let stream: Blocks = match self.fault {
            Fault::Corrupt => Box::pin(honest.map(|m| {
                m.map(|mut m| {
                    let mut data = m.data.to_vec();
                    data[0] ^= 0xff;
                    m.data = data.into();
                    m
                })
            })),
            Fault::StallAfter(n) => Box::pin(honest.take(n).chain(tokio_stream::pending())),
            Fault::FailAfter(n) => Box::pin(
                honest
                    .take(n)
                    .chain(tokio_stream::once(Err(Status::unavailable("disk on fire")))),
            ),
        };
        Ok(Response::new(stream))
    }
}

/// Serves a faulty holder of `files` and registers it with the tracker as `id`.
async fn start_faulty(
    id: &str,
    tracker: &TestTracker,
    files: &[(&str, &[u8])],
    fault: Fault,
) -> (tempfile::TempDir, tokio_util::sync::CancellationToken) {
    let (tmp, dir) = seeded_dir(id, files);
    let (store, _) = Store::open(&dir).unwrap();
    store.rescan().unwrap();
    let catalog = store
        .list()
        .iter()
        .map(|f| tpb::FileEntry {
            name: f.name.clone(),
            size: f.size,
            content_id: f.content_id().to_hex(),
            ..Default::default()
        })
        .collect();
    let service = FaultyHolder {
        inner: PeerService::new(Arc::new(store), ServeLimits::default()),
        fault,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(PeerServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { token.cancelled().await },
            )
            .await;
    });
    tracker
        .client()
        .register(tpb::RegisterRequest {
            peer_id: id.into(),
            port: port as u32,
            files: catalog,
            ..Default::default()
        })
        .await
        .unwrap();
    (tmp, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupting_holder_is_dropped_and_the_file_is_still_exact() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(6 * MIB + 123, 1);
    // Slow enough (under a second for the file) that the liar gets units before the end: a
    // download finishing first never asks every holder.
    let _honest = TestPeer::start_with("honest", tracker.addr, &[("f", &data)], |c| {
        c.limits.upload_rate = Some(Arc::new(RateLimiter::new(8 * MIB as u64)))
    })
    .await;
    let (_t, _stop) = start_faulty("liar", &tracker, &[("f", &data)], Fault::Corrupt).await;
    let me = TestPeer::start("me", tracker.addr, &[]).await;

    let report = me.get("f").await.unwrap();
    assert_eq!(std::fs::read(me.files_dir().join("f")).unwrap(), data);
    let liar = report.holders.iter().find(|h| h.peer_id == "liar").unwrap();
    assert_eq!(liar.bytes, 0, "no byte from the liar was accepted");
    assert!(
        liar.dropped.as_deref().unwrap().contains("corrupt"),
        "{liar:?}"
    );
    let honest = report
        .holders
        .iter()
        .find(|h| h.peer_id == "honest")
        .unwrap();
    assert_eq!(honest.bytes, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_only_liars_hold_a_file_get_fails_and_files_is_unchanged() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(MIB, 2);
    let (_t, _stop) = start_faulty("liar", &tracker, &[("f", &data)], Fault::Corrupt).await;
    let me = TestPeer::start("me", tracker.addr, &[("mine", b"keep me")]).await;

    let err = me.get("f").await.unwrap_err();
    assert!(matches!(err, DownloadError::Incomplete { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(names_in(&me.files_dir()), ["mine"]);
    assert_eq!(
        std::fs::read(me.files_dir().join("mine")).unwrap(),
        b"keep me"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_changed_after_sharing_is_caught_as_a_lie() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(2 * MIB, 3);
    let changed = TestPeer::start_with("changed", tracker.addr, &[("f", &data)], |c| {
        c.rescan_interval = Duration::from_secs(3600)
    })
    .await;
    // Change one byte behind the holder's back: same size and mtime (what its rescans compare),
    // swapped in by one rename, so it keeps offering the old id whenever it looks.
    let shared = changed.files_dir().join("f");
    let mtime = std::fs::metadata(&shared).unwrap().modified().unwrap();
    let mut tampered = data.clone();
    tampered[MIB + 7] ^= 1;
    let staging = changed.dir.join("f.tampered");
    std::fs::write(&staging, &tampered).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&staging)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&staging, &shared).unwrap();
    let _honest = TestPeer::start("honest", tracker.addr, &[("f", &data)]).await;
    let me = TestPeer::start("me", tracker.addr, &[]).await;

    me.get("f").await.unwrap();
    assert_eq!(std::fs::read(me.files_dir().join("f")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_or_failing_holder_hands_its_pieces_to_the_others() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(8 * MIB, 4);
    // The honest holder is slow enough (about 1 s for the file) that the staller's silence
    // passes the stall timeout before the download is done: a download finishing first would
    // simply cancel the straggler instead of dropping it.
    let _good = TestPeer::start_with("good", tracker.addr, &[("f", &data)], |c| {
        c.limits.upload_rate = Some(Arc::new(RateLimiter::new(8 * MIB as u64)))
    })
    .await;
    let (_t1, _s1) = start_faulty("staller", &tracker, &[("f", &data)], Fault::StallAfter(1)).await;
    let (_t2, _s2) = start_faulty("failer", &tracker, &[("f", &data)], Fault::FailAfter(1)).await;
    let me = TestPeer::start_with("me", tracker.addr, &[], |c| {
        c.stall_timeout = Duration::from_millis(500)
    })
    .await;

    let report = me.get("f").await.unwrap();
    assert_eq!(std::fs::read(me.files_dir().join("f")).unwrap(), data);
    for bad in ["staller", "failer"] {
        let h = report.holders.iter().find(|h| h.peer_id == bad).unwrap();
        assert!(h.dropped.is_some(), "{bad} should have been dropped: {h:?}");
    }
    let staller = report
        .holders
        .iter()
        .find(|h| h.peer_id == "staller")
        .unwrap();
    assert!(
        staller.dropped.as_deref().unwrap().contains("stalled"),
        "{staller:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_that_dies_mid_download_is_replaced() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(8 * MIB, 5);
    // Both holders are slow enough that the download is still running when one dies.
    let (_t1, dir1) = seeded_dir("doomed", &[("f", &data)]);
    let (_t2, dir2) = seeded_dir("steady", &[("f", &data)]);
    let mut doomed = IsolatedPeer::start("doomed", tracker.addr, dir1, Some(2 * MIB as u64)).await;
    let _steady = IsolatedPeer::start("steady", tracker.addr, dir2, Some(4 * MIB as u64)).await;
    let me = TestPeer::start("me", tracker.addr, &[]).await;

    let progress = Arc::new(Progress::default());
    let download = {
        let node = me.node.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            node.download(&DownloadRequest::parse("f", Destination::Files), progress)
                .await
        })
    };
    assert!(
        eventually(Duration::from_secs(20), || {
            let p = progress.clone();
            async move { p.done.load(Ordering::Relaxed) >= MIB as u64 }
        })
        .await
    );
    assert!(!download.is_finished());
    doomed.kill();
    let report = download.await.unwrap().unwrap();
    assert_eq!(std::fs::read(me.files_dir().join("f")).unwrap(), data);
    let dead = report
        .holders
        .iter()
        .find(|h| h.peer_id == "doomed")
        .unwrap();
    assert!(dead.dropped.is_some(), "{dead:?}");
    let _ = doomed.addr;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_download_resumes_from_verified_pieces() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(8 * MIB, 6);
    let seeder = TestPeer::start_with("seed", tracker.addr, &[("f", &data)], |c| {
        c.limits.upload_rate = Some(Arc::new(RateLimiter::new(4 * MIB as u64)))
    })
    .await;
    let (_tmp, dir) = seeded_dir("me", &[]);

    // First attempt: killed (runtime dropped, like kill -9) once progress is on disk.
    let mut first = IsolatedPeer::start("me", tracker.addr, dir.clone(), None).await;
    let node = first.node.clone();
    let handle = first.spawn(async move {
        node.download(
            &DownloadRequest::parse("f", Destination::Files),
            Arc::new(Progress::default()),
        )
        .await
    });
    let record = dir
        .join(".p2pshare/partial")
        .join(format!("{}.done", ContentId::of(&data)));
    assert!(
        eventually(Duration::from_secs(20), || {
            let record = record.clone();
            async move {
                std::fs::read(&record).is_ok_and(|r| r.iter().filter(|b| **b == 1).count() >= 8)
            }
        })
        .await
    );
    first.kill();
    drop(handle);
    assert!(
        !dir.join("files/f").exists(),
        "nothing half-written in files/"
    );

    // Second attempt over the same directory: fetches only what is missing.
    let second = IsolatedPeer::start("me", tracker.addr, dir.clone(), None).await;
    let node = second.node.clone();
    let report = second
        .spawn(async move {
            node.download(
                &DownloadRequest::parse("f", Destination::Files),
                Arc::new(Progress::default()),
            )
            .await
        })
        .await
        .unwrap()
        .unwrap();
    assert!(report.resumed >= 8 * 64 * 1024, "{report:?}");
    assert_eq!(report.resumed + report.fetched, data.len() as u64);
    assert_eq!(std::fs::read(dir.join("files/f")).unwrap(), data);
    assert!(names_in(&dir.join(".p2pshare/partial")).is_empty());
    drop(seeder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_peer_leaves_whohas_within_a_few_heartbeats() {
    let tracker = TestTracker::start(Duration::from_secs(1)).await;
    let (_t, dir) = seeded_dir("ghost", &[("f", b"boo")]);
    let mut ghost = IsolatedPeer::start("ghost", tracker.addr, dir, None).await;
    let registered = Instant::now();
    let _alive = TestPeer::start("alive", tracker.addr, &[("f", b"boo")]).await;
    // Heartbeats keep both listed, without a gap, well past the expiry (3 intervals).
    let past_expiry = Duration::from_millis(3500).saturating_sub(registered.elapsed());
    assert!(
        always(past_expiry, || async {
            holders(&tracker, "f").await == ["alive", "ghost"]
        })
        .await,
        "{:?}",
        holders(&tracker, "f").await
    );

    ghost.kill();
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            holders(&tracker, "f").await == ["alive"]
        })
        .await
    );
    assert!(
        killed.elapsed() <= Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_tracker_is_repopulated_and_its_absence_is_a_clear_error() {
    let tracker = TestTracker::start(Duration::from_secs(1)).await;
    let addr = tracker.addr;
    let seed = TestPeer::start("seed", addr, &[("f", b"data")]).await;
    let me = TestPeer::start("me", addr, &[]).await;
    tracker.stop().await;

    // Down: a clear error, fast, and the peers keep serving each other.
    let started = Instant::now();
    let err = me.get("f").await.unwrap_err();
    assert!(err.to_string().contains("tracker unreachable"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(6));
    let mut client = p2pshare::pb::peer::peer_client::PeerClient::new(
        p2pshare::grpc::channel(&seed.node.local_addr().to_string()).unwrap(),
    );
    let info = client
        .get_file_info(pb::GetFileInfoRequest {
            file: Some(pb::FileSelector {
                name: "f".into(),
                content_id: String::new(),
            }),
        })
        .await
        .unwrap();
    assert_eq!(info.into_inner().size, 4);

    // Back on the same address, empty: the peers register again by themselves.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let tracker = TestTracker::start_on(listener, Duration::from_secs(1));
    assert!(
        eventually(Duration::from_secs(5), || async {
            holders(&tracker, "f").await == ["seed"]
        })
        .await
    );
    me.get("f").await.unwrap();
    assert_eq!(std::fs::read(me.files_dir().join("f")).unwrap(), b"data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_added_or_removed_while_running_are_announced_and_withdrawn() {
    /// How soon a complete file must be announced, or a removed one withdrawn.
    const PROMPTLY: Duration = Duration::from_secs(1);
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    // The periodic rescan is a minute away: only the folder watcher can meet the deadlines.
    let peer = TestPeer::start_with("p", tracker.addr, &[], |c| {
        c.rescan_interval = Duration::from_secs(60)
    })
    .await;
    let files = peer.files_dir();

    // Written and closed.
    std::fs::write(files.join("late"), b"arrived").unwrap();
    assert!(
        eventually(PROMPTLY, || async {
            holders(&tracker, "late").await == ["p"]
        })
        .await,
        "a closed file was not announced within {PROMPTLY:?}"
    );

    // A file being written and not closed yet...
    let whole = content(3 * MIB + 17, 9);
    let mut growing = std::fs::File::create(files.join("growing")).unwrap();
    std::io::Write::write_all(&mut growing, &whole[..MIB]).unwrap();

    // ...while another is written elsewhere, then renamed into place.
    let staging = peer.dir.join("staging");
    std::fs::write(&staging, b"moved in").unwrap();
    std::fs::rename(&staging, files.join("moved")).unwrap();
    assert!(
        eventually(PROMPTLY, || async {
            holders(&tracker, "moved").await == ["p"]
        })
        .await,
        "a file renamed into files/ was not announced within {PROMPTLY:?}"
    );

    // The rescan that announced it came after the open file's writes (events arrive in order)
    // and has finished: the open file was left out.
    assert!(
        versions(&tracker, "growing").await.is_empty(),
        "a file still being written was announced"
    );
    // Closed: announced whole.
    std::io::Write::write_all(&mut growing, &whole[MIB..]).unwrap();
    drop(growing);
    let whole_id = ContentId::of(&whole).to_hex();
    assert!(
        eventually(PROMPTLY, || async {
            versions(&tracker, "growing").await == [whole_id.clone()]
        })
        .await,
        "the finished file was not announced within {PROMPTLY:?}: {:?}",
        versions(&tracker, "growing").await
    );

    std::fs::remove_file(files.join("late")).unwrap();
    assert!(
        eventually(PROMPTLY, || async {
            holders(&tracker, "late").await.is_empty()
        })
        .await,
        "a removed file was not withdrawn within {PROMPTLY:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_over_unchanged_files_does_not_rehash() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let (_t, dir) = seeded_dir("p", &[("a", &content(3 * MIB, 7)), ("b", b"small")]);
    for expected in [3 * MIB as u64 + 5, 0] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = PeerConfig::new("p", dir.clone(), &tracker.addr.to_string());
        let (node, info) = PeerNode::start(config, listener).await.unwrap();
        assert_eq!(info.hashed_bytes, expected);
        assert_eq!(info.shared, 2);
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_gets_of_one_file_leave_exactly_one_correct_copy() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(4 * MIB + 1, 8);
    let _a = TestPeer::start("a", tracker.addr, &[("f", &data)]).await;
    let _b = TestPeer::start("b", tracker.addr, &[("f", &data)]).await;
    let me = Arc::new(TestPeer::start("me", tracker.addr, &[]).await);
    let mut gets = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let me = me.clone();
        gets.spawn(async move { me.get("f").await.map(|r| r.content_id) });
    }
    while let Some(result) = gets.join_next().await {
        assert_eq!(result.unwrap().unwrap(), ContentId::of(&data));
    }
    assert_eq!(names_in(&me.files_dir()), ["f"]);
    assert_eq!(std::fs::read(me.files_dir().join("f")).unwrap(), data);
    assert!(names_in(&me.dir.join(".p2pshare/partial")).is_empty());
}
