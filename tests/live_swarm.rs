//! A live swarm: downloaders serve the pieces they have verified, the set of holders stays alive
//! during a download (holders that come back are used again, holders learned by peer exchange
//! keep a download going while the tracker is down), a crowd feeds itself, and a holder list full
//! of dead entries costs little.

mod common;

use common::scripted_tracker::{start_scripted_tracker, Answers};
use common::{content, seeded_dir, IsolatedPeer, TestPeer, TestTracker};
use p2pshare::chunking::{Bitfield, ContentId, Manifest};
use p2pshare::pb::peer as pb;
use p2pshare::pb::peer::peer_client::PeerClient;
use p2pshare::pb::tracker as tpb;
use p2pshare::peer::download::{Destination, DownloadRequest, Progress};
use p2pshare::peer::server::RateLimiter;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

const MIB: usize = 1 << 20;

/// Polls `check` every 20 ms until it holds or `limit` passes.
async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn capped(rate: usize) -> impl FnOnce(&mut p2pshare::peer::PeerConfig) {
    move |c| c.limits.upload_rate = Some(Arc::new(RateLimiter::new(rate as u64)))
}

/// Starts a download on `peer` in the background; its progress counters are returned with it.
fn start_get(
    peer: &TestPeer,
    name: &str,
) -> (
    Arc<Progress>,
    tokio::task::JoinHandle<
        Result<p2pshare::peer::download::DownloadReport, p2pshare::peer::download::DownloadError>,
    >,
) {
    let progress = Arc::new(Progress::default());
    let node = peer.node.clone();
    let request = DownloadRequest::parse(name, Destination::Files);
    let counters = progress.clone();
    let task = tokio::spawn(async move { node.download(&request, counters).await });
    (progress, task)
}

fn selector(id: ContentId) -> Option<pb::FileSelector> {
    Some(pb::FileSelector {
        name: String::new(),
        content_id: id.to_hex(),
    })
}

async fn holders_of(tracker: &TestTracker, name: &str) -> Vec<tpb::Holder> {
    match tracker
        .client()
        .who_has(tpb::WhoHasRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
    {
        Ok(answer) => answer
            .into_inner()
            .versions
            .into_iter()
            .flat_map(|v| v.holders)
            .collect(),
        Err(status) if status.code() == Code::NotFound => vec![],
        Err(status) => panic!("WhoHas: {status}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partial_holder_serves_only_verified_pieces() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(16 * MIB, 11);
    let id = ContentId::of(&data);
    let _seeder = TestPeer::start_with("S", tracker.addr, &[("f", &data)], capped(4 * MIB)).await;
    let downloader = TestPeer::start("D", tracker.addr, &[]).await;
    let (progress, download) = start_get(&downloader, "f");
    until("2 MiB verified", Duration::from_secs(20), || {
        progress.done.load(Ordering::Relaxed) >= 2 * MIB as u64
    })
    .await;

    // The tracker lists the downloader as a partial holder, the seeder as complete.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let holders = holders_of(&tracker, "f").await;
        if holders.iter().any(|h| h.peer_id == "D" && h.partial) {
            assert!(holders.iter().any(|h| h.peer_id == "S" && !h.partial));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "D never listed as partial: {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let channel = p2pshare::grpc::channel(&downloader.node.local_addr().to_string()).unwrap();
    let mut client = PeerClient::new(channel);
    // Its manifest is served (it is verified), and its pieces are listed.
    let manifest = client
        .get_manifest(pb::GetManifestRequest { file: selector(id) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(manifest.content_id, id.to_hex());
    let expected = Manifest::of_bytes(&data);
    let geometry = expected.geometry();
    let mut served_a_missing_piece = 0;
    let mut refused = false;
    for _ in 0..5 {
        let pieces = client
            .get_pieces(pb::GetPiecesRequest { file: selector(id) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pieces.piece_count, geometry.piece_count());
        let have = Bitfield::from_bytes(&pieces.bitfield, pieces.piece_count).unwrap();
        if have.is_full() {
            break;
        }
        assert!(!pieces.complete && have.count() > 0, "{have:?}");
        // A piece it has comes back exact.
        let got = have.iter().next().unwrap();
        assert_eq!(
            fetch_piece(&mut client, id, &geometry, got).await.unwrap(),
            piece(&data, &geometry, got)
        );
        // A piece it lacks is refused, never served unverified.
        let lacking = (0..geometry.piece_count())
            .rev()
            .find(|p| !have.has(*p))
            .unwrap();
        match fetch_piece(&mut client, id, &geometry, lacking).await {
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
                refused = true;
                break;
            }
            // Verified in between: then it must be exact.
            Ok(bytes) => {
                assert_eq!(bytes, piece(&data, &geometry, lacking));
                served_a_missing_piece += 1;
            }
        }
    }
    assert!(
        refused,
        "never refused ({served_a_missing_piece} raced to verified)"
    );

    let report = download.await.unwrap().unwrap();
    assert_eq!(report.fetched + report.resumed, data.len() as u64);
    assert_eq!(
        std::fs::read(downloader.files_dir().join("f")).unwrap(),
        data
    );
    // Complete now: listed as such, and every piece served.
    let deadline = Instant::now() + Duration::from_secs(5);
    while holders_of(&tracker, "f").await.iter().any(|h| h.partial) {
        assert!(Instant::now() < deadline, "D still listed as partial");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pieces = client
        .get_pieces(pb::GetPiecesRequest { file: selector(id) })
        .await
        .unwrap()
        .into_inner();
    assert!(pieces.complete);
}

fn piece(data: &[u8], geometry: &p2pshare::chunking::Geometry, piece: u64) -> Vec<u8> {
    let range = geometry.piece_bytes(piece);
    data[range.start as usize..range.end as usize].to_vec()
}

async fn fetch_piece(
    client: &mut PeerClient<tonic::transport::Channel>,
    id: ContentId,
    geometry: &p2pshare::chunking::Geometry,
    piece: u64,
) -> Result<Vec<u8>, Status> {
    let blocks = geometry.blocks_of_pieces(piece..piece + 1);
    let mut stream = client
        .get_blocks(pb::GetBlocksRequest {
            file: selector(id),
            first_block: blocks.start,
            block_count: blocks.end - blocks.start,
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await? {
        bytes.extend_from_slice(&message.data);
    }
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_feeds_itself_and_the_seeder_sends_few_copies() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(16 * MIB, 12);
    // The seeder's upload is the bottleneck, as for a flash crowd on a LAN.
    let seeder = TestPeer::start_with("S", tracker.addr, &[("f", &data)], capped(8 * MIB)).await;
    let mut crowd = Vec::new();
    for i in 0..4 {
        crowd.push(TestPeer::start(&format!("D{i}"), tracker.addr, &[]).await);
    }
    let downloads: Vec<_> = crowd.iter().map(|peer| start_get(peer, "f").1).collect();
    for (peer, download) in crowd.iter().zip(downloads) {
        let report = download.await.unwrap().unwrap();
        assert_eq!(report.size, data.len() as u64);
        assert_eq!(std::fs::read(peer.files_dir().join("f")).unwrap(), data);
    }
    let copies = seeder.node.bytes_uploaded() as f64 / data.len() as f64;
    let traded: u64 = crowd.iter().map(|p| p.node.bytes_uploaded()).sum();
    assert!(copies < 2.5, "the seeder sent {copies:.2} copies");
    assert!(traded > 0, "the crowd traded nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_killed_and_restarted_mid_download_is_used_again() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(8 * MIB, 13);
    let (_ta, dir_a) = seeded_dir("A", &[("f", &data)]);
    let (_tb, dir_b) = seeded_dir("B", &[("f", &data)]);
    let rate = Some(2 * MIB as u64);
    let mut a = IsolatedPeer::start("A", tracker.addr, dir_a.clone(), rate).await;
    let mut b = IsolatedPeer::start("B", tracker.addr, dir_b, rate).await;
    let downloader = TestPeer::start("D", tracker.addr, &[]).await;
    let (progress, download) = start_get(&downloader, "f");
    until("1 MiB verified", Duration::from_secs(20), || {
        progress.done.load(Ordering::Relaxed) >= MIB as u64
    })
    .await;

    // A dies and comes back on its address; then B dies for good: only A can finish the file.
    let address = a.addr;
    a.kill();
    let _a = IsolatedPeer::start_at(address, "A", tracker.addr, dir_a, rate).await;
    b.kill();
    assert!(!download.is_finished());
    let report = download.await.unwrap().unwrap();
    assert_eq!(
        std::fs::read(downloader.files_dir().join("f")).unwrap(),
        data
    );
    let a_report = report.holders.iter().find(|h| h.peer_id == "A").unwrap();
    let b_report = report.holders.iter().find(|h| h.peer_id == "B").unwrap();
    assert!(b_report.dropped.is_some(), "{b_report:?}");
    assert!(
        a_report.bytes + b_report.bytes == data.len() as u64,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_outlives_the_tracker_with_holders_learned_by_exchange() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(16 * MIB, 14);
    let _seeder = TestPeer::start_with("S", tracker.addr, &[("f", &data)], capped(4 * MIB)).await;
    let first = TestPeer::start("D1", tracker.addr, &[]).await;
    let (progress1, download1) = start_get(&first, "f");
    until("D1 under way", Duration::from_secs(20), || {
        progress1.done.load(Ordering::Relaxed) >= MIB as u64
    })
    .await;
    // D2 joins after D1 started; then the tracker goes away.
    let second = TestPeer::start("D2", tracker.addr, &[]).await;
    let (progress2, download2) = start_get(&second, "f");
    until("D2 under way", Duration::from_secs(20), || {
        progress2.done.load(Ordering::Relaxed) > 0
    })
    .await;
    tracker.stop().await;

    let report1 = download1.await.unwrap().unwrap();
    let report2 = download2.await.unwrap().unwrap();
    assert_eq!(std::fs::read(first.files_dir().join("f")).unwrap(), data);
    assert_eq!(std::fs::read(second.files_dir().join("f")).unwrap(), data);
    let from_d2 = report1.holders.iter().find(|h| h.peer_id == "D2");
    assert!(
        from_d2.is_some_and(|h| h.bytes > 0),
        "D1 never used D2, which joined after it: {report1:?}"
    );
    assert!(report2
        .holders
        .iter()
        .any(|h| h.peer_id == "D1" && h.bytes > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_dead_listed_holders_cost_a_download_little() {
    let real = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(4 * MIB, 15);
    let seeder = TestPeer::start("S", real.addr, &[("f", &data)]).await;
    // Ten silent holders (they accept connections and never answer), then 9,989 closed ports,
    // then the one honest holder.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    }
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let holder = |i: usize, address: String| tpb::Holder {
        peer_id: format!("H{i}"),
        address,
        partial: false,
    };
    let mut holders: Vec<tpb::Holder> = silent
        .iter()
        .enumerate()
        .map(|(i, l)| holder(i, l.local_addr().unwrap().to_string()))
        .collect();
    holders.extend((10..9_999).map(|i| holder(i, closed.to_string())));
    holders.push(tpb::Holder {
        peer_id: "S".into(),
        address: seeder.node.local_addr().to_string(),
        partial: false,
    });
    let tracker = start_scripted_tracker(Answers {
        register: None,
        versions: vec![(
            "f".into(),
            vec![tpb::FileVersion {
                name: "f".into(),
                size: data.len() as u64,
                content_id: ContentId::of(&data).to_hex(),
                holders,
            }],
        )],
        files: vec![],
        peers: vec![],
    })
    .await
    .addr;
    let downloader = TestPeer::start("D", tracker, &[]).await;

    let started = Instant::now();
    let report = downloader.get("f").await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        std::fs::read(downloader.files_dir().join("f")).unwrap(),
        data
    );
    assert_eq!(
        report
            .holders
            .iter()
            .find(|h| h.peer_id == "S")
            .unwrap()
            .bytes,
        data.len() as u64
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_straggler_does_not_hold_up_a_finished_download() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(4 * MIB, 16);
    // A holder so slow that a unit of it would take minutes, and a fast one.
    let _slow =
        TestPeer::start_with("slow", tracker.addr, &[("f", &data)], capped(16 * 1024)).await;
    let _fast = TestPeer::start("fast", tracker.addr, &[("f", &data)]).await;
    let downloader = TestPeer::start_with("D", tracker.addr, &[], |c| {
        c.stall_timeout = Duration::from_secs(10)
    })
    .await;
    let started = Instant::now();
    let report = downloader.get("f").await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        std::fs::read(downloader.files_dir().join("f")).unwrap(),
        data
    );
    // Done when the fast holder has delivered the last piece: the slow holder's unit in flight
    // is cancelled, not waited for (that would take the stall timeout or minutes).
    assert!(took < Duration::from_secs(5), "took {took:?}: {report:?}");
    let fast = report.holders.iter().find(|h| h.peer_id == "fast").unwrap();
    assert!(fast.bytes >= data.len() as u64 / 2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_whose_holders_have_nothing_more_gives_up_instead_of_waiting_forever() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(8 * MIB, 17);
    let (_ts, dir) = seeded_dir("S", &[("f", &data)]);
    let mut seeder = IsolatedPeer::start("S", tracker.addr, dir, Some(MIB as u64)).await;
    // D1 gets part of the file, then the only complete holder dies: D1 stays a partial holder.
    let first = TestPeer::start_with("D1", tracker.addr, &[], |c| {
        c.stall_timeout = Duration::from_secs(60)
    })
    .await;
    let (progress, _stuck) = start_get(&first, "f");
    until("D1 under way", Duration::from_secs(20), || {
        progress.done.load(Ordering::Relaxed) >= MIB as u64
    })
    .await;
    seeder.kill();
    // D2 finds D1 (partial, connected, with nothing D2 lacks once it has D1's pieces) and the
    // dead seeder: it takes what D1 has, then gives up (twice its stall timeout without
    // progress) instead of waiting on D1 forever.
    let second = TestPeer::start_with("D2", tracker.addr, &[], |c| {
        c.stall_timeout = Duration::from_secs(1)
    })
    .await;
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), second.get("f"))
        .await
        .expect("the download never gave up");
    let err = outcome.unwrap_err();
    assert!(
        matches!(
            err,
            p2pshare::peer::download::DownloadError::Incomplete { .. }
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(!second.files_dir().join("f").exists());
}
