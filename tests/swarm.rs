//! End-to-end behaviour of an in-process swarm: a real tracker and real peers on ephemeral
//! loopback ports, talking gRPC. Every download is checked byte for byte on disk, every error by
//! its gRPC code, and every tracker answer through a real `TrackerClient`.

mod common;

use common::{content, names_in, TestPeer, TestTracker};
use p2pshare::chunking::{ContentId, BLOCK_SIZE};
use p2pshare::pb::peer as peer_pb;
use p2pshare::pb::peer::peer_client::PeerClient;
use p2pshare::pb::tracker as tracker_pb;
use p2pshare::pb::tracker::tracker_client::TrackerClient;
use p2pshare::peer::download::{DownloadError, DownloadReport};
use p2pshare::peer::store::StoreError;
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

/// Long enough that no peer expires during a test: a peer that disappears did so by `Leave`.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Upper bound on any single step (a download, an RPC): a hang fails the test instead of
/// blocking the suite.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;
const BLOCK: usize = BLOCK_SIZE as usize;

/// Sizes around every boundary that matters: empty, one byte, one block +/- 1, one piece +/- 1
/// (64 KiB pieces), and several MiB (many pieces, a short last piece and a short last block).
const INTERESTING_SIZES: &[usize] = &[
    0,
    1,
    BLOCK - 1,
    BLOCK,
    BLOCK + 1,
    64 * 1024 - 1,
    64 * 1024,
    64 * 1024 + 1,
    3 * MIB + 12_345,
];

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP_TIMEOUT:?}"))
}

async fn get_ok(peer: &TestPeer, spec: &str) -> DownloadReport {
    let what = format!("{} get {spec}", peer.node.id());
    within(&what, peer.get(spec))
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn peer_client(peer: &TestPeer) -> PeerClient<Channel> {
    let channel = p2pshare::grpc::channel(&peer.node.local_addr().to_string()).unwrap();
    PeerClient::new(channel).max_decoding_message_size(p2pshare::grpc::MAX_MESSAGE_SIZE)
}

fn partial_dir(peer: &TestPeer) -> std::path::PathBuf {
    peer.dir.join(".p2pshare").join("partial")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Asserts the downloaded file is exactly `expected`, without printing megabytes on failure.
fn assert_same_bytes(path: &Path, expected: &[u8]) {
    let got = read(path);
    assert_eq!(
        got.len(),
        expected.len(),
        "{}: size differs",
        path.display()
    );
    if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{}: first differing byte at offset {at}", path.display());
    }
}

async fn who_has(
    client: &mut TrackerClient<Channel>,
    name: &str,
    prefix: &str,
) -> Result<Vec<tracker_pb::FileVersion>, tonic::Status> {
    let request = tracker_pb::WhoHasRequest {
        name: name.into(),
        content_id_prefix: prefix.into(),
        ..Default::default()
    };
    within("WhoHas", client.who_has(request))
        .await
        .map(|r| r.into_inner().versions)
}

/// The holders of each version of `name`, as (content id, peer ids), in the tracker's order.
async fn holders(client: &mut TrackerClient<Channel>, name: &str) -> Vec<(String, Vec<String>)> {
    who_has(client, name, "")
        .await
        .unwrap_or_else(|s| panic!("WhoHas {name}: {s:?}"))
        .into_iter()
        .map(|v| {
            let ids = v.holders.into_iter().map(|h| h.peer_id).collect();
            (v.content_id, ids)
        })
        .collect()
}

async fn list_peers(client: &mut TrackerClient<Channel>) -> Vec<tracker_pb::PeerSummary> {
    within(
        "ListPeers",
        client.list_peers(tracker_pb::ListPeersRequest::default()),
    )
    .await
    .unwrap()
    .into_inner()
    .peers
}

async fn list_files(client: &mut TrackerClient<Channel>) -> Vec<tracker_pb::FileSummary> {
    within(
        "ListFiles",
        client.list_files(tracker_pb::ListFilesRequest::default()),
    )
    .await
    .unwrap()
    .into_inner()
    .files
}

fn by_name(name: &str) -> Option<peer_pb::FileSelector> {
    Some(peer_pb::FileSelector {
        name: name.into(),
        content_id: String::new(),
    })
}

fn blocks_request(name: &str, first_block: u64, block_count: u64) -> peer_pb::GetBlocksRequest {
    peer_pb::GetBlocksRequest {
        file: by_name(name),
        first_block,
        block_count,
    }
}

/// The gRPC code of a `GetBlocks` that must fail (at the call or in the stream).
async fn get_blocks_code(
    client: &mut PeerClient<Channel>,
    request: peer_pb::GetBlocksRequest,
) -> Code {
    match within("GetBlocks", client.get_blocks(request)).await {
        Err(status) => status.code(),
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match within("GetBlocks message", stream.message()).await {
                    Err(status) => return status.code(),
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("GetBlocks succeeded where it must fail"),
                }
            }
        }
    }
}

/// Every message of a `GetBlocks` stream, in order.
async fn get_blocks_messages(
    client: &mut PeerClient<Channel>,
    request: peer_pb::GetBlocksRequest,
) -> Vec<peer_pb::GetBlocksResponse> {
    let mut stream = within("GetBlocks", client.get_blocks(request))
        .await
        .unwrap_or_else(|s| panic!("GetBlocks: {s:?}"))
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = within("GetBlocks message", stream.message())
        .await
        .unwrap_or_else(|s| panic!("GetBlocks stream: {s:?}"))
    {
        messages.push(message);
        assert!(messages.len() <= 100_000, "GetBlocks stream does not end");
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_holder_downloads_are_byte_identical_at_every_edge_size() {
    let tracker = TestTracker::start(HEARTBEAT).await;
    let files: Vec<(String, Vec<u8>)> = INTERESTING_SIZES
        .iter()
        .enumerate()
        .map(|(i, &size)| (format!("size-{size}.bin"), content(size, i as u64 + 1)))
        .collect();
    let shared: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let holder = TestPeer::start("holder", tracker.addr, &shared).await;
    let getter = TestPeer::start("getter", tracker.addr, &[]).await;

    for (name, bytes) in &files {
        let report = get_ok(&getter, name).await;
        assert!(!report.already_had, "{name}");
        assert_eq!(report.size, bytes.len() as u64, "{name}");
        assert_eq!(report.content_id, ContentId::of(bytes), "{name}");
        assert_eq!(report.fetched, bytes.len() as u64, "{name}: bytes fetched");
        assert_eq!(report.resumed, 0, "{name}");
        assert_eq!(report.holders.len(), 1, "{name}");
        assert_eq!(report.holders[0].peer_id, "holder", "{name}");
        assert_eq!(report.holders[0].bytes, bytes.len() as u64, "{name}");
        assert!(
            report.holders[0].dropped.is_none(),
            "{name}: {:?}",
            report.holders[0].dropped
        );
        let path = getter.files_dir().join(name);
        assert_eq!(report.path.as_deref(), Some(path.as_path()));
        assert_same_bytes(&path, bytes);
        // The holder's copy is untouched.
        assert_same_bytes(&holder.files_dir().join(name), bytes);
    }
    let mut expected: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(names_in(&getter.files_dir()), expected);
    assert_eq!(names_in(&partial_dir(&getter)), Vec::<String>::new());

    getter.node.shutdown().await;
    holder.node.shutdown().await;
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_holders_all_deliver_and_the_copy_is_byte_identical() {
    let tracker = TestTracker::start(HEARTBEAT).await;
    // 8 MiB + a short tail: 129 pieces of 64 KiB, the last one partial.
    let big = content(8 * MIB + 777, 42);
    let shared: &[(&str, &[u8])] = &[("big.bin", &big)];
    let a = TestPeer::start("A", tracker.addr, shared).await;
    let b = TestPeer::start("B", tracker.addr, shared).await;
    let c = TestPeer::start("C", tracker.addr, shared).await;
    let d = TestPeer::start("D", tracker.addr, &[]).await;

    let report = get_ok(&d, "big.bin").await;
    assert_same_bytes(&d.files_dir().join("big.bin"), &big);
    assert_eq!(report.content_id, ContentId::of(&big));
    assert_eq!(report.fetched, big.len() as u64);
    let mut ids: Vec<&str> = report.holders.iter().map(|h| h.peer_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["A", "B", "C"], "{report:?}");
    for holder in &report.holders {
        assert!(
            holder.bytes > 0,
            "holder {} delivered nothing: {report:?}",
            holder.peer_id
        );
        assert!(holder.dropped.is_none(), "{report:?}");
    }
    // Every verified byte is credited to exactly one holder.
    let credited: u64 = report.holders.iter().map(|h| h.bytes).sum();
    assert_eq!(credited, big.len() as u64, "{report:?}");
    assert_eq!(names_in(&d.files_dir()), ["big.bin"]);
    assert_eq!(names_in(&partial_dir(&d)), Vec::<String>::new());

    for peer in [&a, &b, &c, &d] {
        peer.node.shutdown().await;
    }
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tracker_views_follow_register_announce_and_leave() {
    let tracker = TestTracker::start(HEARTBEAT).await;
    let f = content(10_000, 1);
    let g = content(5_000, 2);
    let a = TestPeer::start("A", tracker.addr, &[("f", &f)]).await;
    let b = TestPeer::start("B", tracker.addr, &[("f", &f), ("g", &g)]).await;
    let c = TestPeer::start("C", tracker.addr, &[]).await;
    let mut client = tracker.client();
    let f_id = ContentId::of(&f).to_hex();
    let g_id = ContentId::of(&g).to_hex();

    // Register: the catalogs peers started with.
    let versions = who_has(&mut client, "f", "").await.unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0].name, "f");
    assert_eq!(versions[0].size, f.len() as u64);
    assert_eq!(versions[0].content_id, f_id);
    let listed: Vec<(String, String)> = versions[0]
        .holders
        .iter()
        .map(|h| (h.peer_id.clone(), h.address.clone()))
        .collect();
    assert_eq!(
        listed,
        [
            ("A".to_string(), a.node.local_addr().to_string()),
            ("B".to_string(), b.node.local_addr().to_string()),
        ]
    );
    assert_eq!(
        holders(&mut client, "g").await,
        [(g_id.clone(), vec!["B".to_string()])]
    );
    let peers: Vec<(String, String, u32, u64)> = list_peers(&mut client)
        .await
        .into_iter()
        .map(|p| (p.peer_id, p.address, p.file_count, p.total_bytes))
        .collect();
    assert_eq!(
        peers,
        [
            (
                "A".into(),
                a.node.local_addr().to_string(),
                1,
                f.len() as u64
            ),
            (
                "B".into(),
                b.node.local_addr().to_string(),
                2,
                (f.len() + g.len()) as u64
            ),
            ("C".into(), c.node.local_addr().to_string(), 0, 0),
        ]
    );
    let files: Vec<(String, u64, String, u32)> = list_files(&mut client)
        .await
        .into_iter()
        .map(|s| (s.name, s.size, s.content_id, s.holder_count))
        .collect();
    assert_eq!(
        files,
        [
            ("f".into(), f.len() as u64, f_id.clone(), 2),
            ("g".into(), g.len() as u64, g_id.clone(), 1),
        ]
    );

    // AnnounceFile: once `get` returns, the downloader is a holder.
    get_ok(&c, "f").await;
    assert_eq!(
        holders(&mut client, "f").await,
        [(
            f_id.clone(),
            vec!["A".to_string(), "B".to_string(), "C".to_string()]
        )]
    );
    let files = list_files(&mut client).await;
    assert_eq!(files[0].holder_count, 3, "{files:?}");
    let c_summary = list_peers(&mut client)
        .await
        .into_iter()
        .find(|p| p.peer_id == "C");
    assert_eq!(c_summary.map(|p| p.file_count), Some(1));

    // Leave: a peer that shuts down is gone at once (the heartbeat expiry is far away).
    a.node.shutdown().await;
    assert_eq!(
        holders(&mut client, "f").await,
        [(f_id.clone(), vec!["B".to_string(), "C".to_string()])]
    );
    let ids: Vec<String> = list_peers(&mut client)
        .await
        .into_iter()
        .map(|p| p.peer_id)
        .collect();
    assert_eq!(ids, ["B", "C"]);
    b.node.shutdown().await;
    let status = who_has(&mut client, "g", "").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        holders(&mut client, "f").await,
        [(f_id, vec!["C".to_string()])]
    );
    let names: Vec<String> = list_files(&mut client)
        .await
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["f"]);
    c.node.shutdown().await;
    assert!(list_peers(&mut client).await.is_empty());
    assert!(list_files(&mut client).await.is_empty());
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_canonical_grpc_codes() {
    let tracker = TestTracker::start(HEARTBEAT).await;
    // 11 blocks, the last one a single byte.
    let small = content(10 * BLOCK + 1, 3);
    let a = TestPeer::start("A", tracker.addr, &[("small", &small)]).await;
    let mut tracker_client = tracker.client();
    let mut client = peer_client(&a);

    // Unknown file.
    let status = who_has(&mut tracker_client, "nope", "").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = who_has(&mut tracker_client, "small", "0123").await;
    if !ContentId::of(&small).to_hex().starts_with("0123") {
        assert_eq!(status.unwrap_err().code(), Code::NotFound);
    }
    let status = who_has(&mut tracker_client, "../etc", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .get_file_info(peer_pb::GetFileInfoRequest {
            file: by_name("nope"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = client
        .get_manifest(peer_pb::GetManifestRequest {
            file: by_name("nope"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        get_blocks_code(&mut client, blocks_request("nope", 0, 1)).await,
        Code::NotFound
    );
    let unknown_content = peer_pb::GetBlocksRequest {
        file: Some(peer_pb::FileSelector {
            name: String::new(),
            content_id: ContentId::of(b"nobody has this").to_hex(),
        }),
        first_block: 0,
        block_count: 1,
    };
    assert_eq!(
        get_blocks_code(&mut client, unknown_content).await,
        Code::NotFound
    );

    // Past the end.
    for (first, count) in [(11, 1), (10, 2), (0, 12), (u64::MAX, 2)] {
        assert_eq!(
            get_blocks_code(&mut client, blocks_request("small", first, count)).await,
            Code::OutOfRange,
            "blocks {first} + {count}"
        );
    }
    // Empty range, missing selector, empty selector.
    assert_eq!(
        get_blocks_code(&mut client, blocks_request("small", 0, 0)).await,
        Code::InvalidArgument
    );
    let no_selector = peer_pb::GetBlocksRequest {
        file: None,
        first_block: 0,
        block_count: 1,
    };
    assert_eq!(
        get_blocks_code(&mut client, no_selector).await,
        Code::InvalidArgument
    );
    let empty_selector = peer_pb::GetBlocksRequest {
        file: Some(peer_pb::FileSelector::default()),
        first_block: 0,
        block_count: 1,
    };
    assert_eq!(
        get_blocks_code(&mut client, empty_selector).await,
        Code::InvalidArgument
    );
    let status = client
        .get_file_info(peer_pb::GetFileInfoRequest { file: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The last block alone is the file's last byte.
    let messages = get_blocks_messages(&mut client, blocks_request("small", 10, 1)).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].first_block, 10);
    assert_eq!(&messages[0].data[..], &small[10 * BLOCK..]);

    a.node.shutdown().await;
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_info_manifest_and_blocks_serve_the_files_bytes() {
    let tracker = TestTracker::start(HEARTBEAT).await;
    // 1 MiB + 100 bytes: 257 blocks, 17 pieces of 64 KiB.
    let data = content(MIB + 100, 4);
    let a = TestPeer::start("A", tracker.addr, &[("data", &data)]).await;
    let mut client = peer_client(&a);

    let info = client
        .get_file_info(peer_pb::GetFileInfoRequest {
            file: by_name("data"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "data");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.block_size, BLOCK_SIZE);
    assert_eq!(info.block_count, 257);
    assert_eq!(info.content_id, ContentId::of(&data).to_hex());
    assert!(info.piece_size.is_power_of_two() && info.piece_size % BLOCK_SIZE == 0);
    assert_eq!(
        info.piece_count,
        (data.len() as u64).div_ceil(info.piece_size as u64)
    );
    // The same file by content id alone.
    let by_id = client
        .get_file_info(peer_pb::GetFileInfoRequest {
            file: Some(peer_pb::FileSelector {
                name: String::new(),
                content_id: info.content_id.clone(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id, info);
    let manifest = client
        .get_manifest(peer_pb::GetManifestRequest {
            file: by_name("data"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(manifest.content_id, info.content_id);
    assert_eq!(manifest.size, info.size);
    assert_eq!(manifest.piece_size, info.piece_size);
    assert_eq!(manifest.piece_hashes.len() as u64, info.piece_count);
    assert!(manifest.piece_hashes.iter().all(|h| h.len() == 32));

    // Ranges starting inside the file and ending at its (short) last block, or before it.
    for (first, count) in [(1, 256), (0, 257), (3, 8), (200, 50)] {
        let messages = get_blocks_messages(&mut client, blocks_request("data", first, count)).await;
        let start = first as usize * BLOCK;
        let end = ((first + count) as usize * BLOCK).min(data.len());
        let mut expected_block = first;
        let mut joined = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(
                m.first_block, expected_block,
                "range {first}+{count}, message {i}"
            );
            assert!(!m.data.is_empty());
            if i + 1 < messages.len() {
                assert_eq!(
                    m.data.len() % BLOCK,
                    0,
                    "only the last message may end short"
                );
            }
            expected_block += m.data.len().div_ceil(BLOCK) as u64;
            joined.extend_from_slice(&m.data);
        }
        assert_eq!(expected_block, first + count, "range {first}+{count}");
        assert!(
            joined == data[start..end],
            "range {first}+{count}: bytes differ"
        );
        // Several blocks per message: far fewer messages than blocks.
        if count >= 8 {
            assert!(
                messages.len() as u64 <= count.div_ceil(4),
                "range {first}+{count} took {} messages",
                messages.len()
            );
            assert!(
                messages[0].data.len() >= 4 * BLOCK,
                "first message: {} bytes",
                messages[0].data.len()
            );
        }
    }

    a.node.shutdown().await;
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_reports_not_found_already_had_and_leaves_nothing_stray() {
    let tracker = TestTracker::start(HEARTBEAT).await;
    let mine = content(70_000, 5);
    let shared = content(200_000, 6);
    let a = TestPeer::start_with(
        "A",
        tracker.addr,
        &[("mine", &mine), ("shared", &shared)],
        |c| c.rescan_interval = Duration::from_secs(3600),
    )
    .await;
    let b = TestPeer::start_with("B", tracker.addr, &[], |c| {
        c.rescan_interval = Duration::from_secs(3600)
    })
    .await;

    // Nobody has it.
    match within("get nobody", b.get("nobody-has-this")).await {
        Err(DownloadError::NotFound(name)) => assert_eq!(name, "nobody-has-this"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match within("get bad name", b.get("../escape")).await {
        Err(DownloadError::BadName(_)) => {}
        other => panic!("expected BadName, got {other:?}"),
    }
    assert_eq!(names_in(&b.files_dir()), Vec::<String>::new());
    assert_eq!(names_in(&partial_dir(&b)), Vec::<String>::new());

    // Only the peer itself has it: nothing to fetch.
    let report = get_ok(&a, "mine").await;
    assert!(report.already_had, "{report:?}");
    assert_eq!(report.fetched, 0);
    assert!(report.holders.is_empty(), "{report:?}");
    assert_eq!(report.content_id, ContentId::of(&mine));
    assert_eq!(
        report.path.as_deref(),
        Some(a.files_dir().join("mine").as_path())
    );
    assert_same_bytes(&a.files_dir().join("mine"), &mine);
    assert_eq!(names_in(&a.files_dir()), ["mine", "shared"]);
    assert_eq!(names_in(&partial_dir(&a)), Vec::<String>::new());

    // A successful get leaves exactly the file, nothing in partial/.
    let report = get_ok(&b, "shared").await;
    assert!(!report.already_had);
    assert_same_bytes(&b.files_dir().join("shared"), &shared);
    assert_eq!(names_in(&b.files_dir()), ["shared"]);
    assert_eq!(names_in(&partial_dir(&b)), Vec::<String>::new());
    // Getting it again is a no-op too.
    let again = get_ok(&b, "shared").await;
    assert!(again.already_had && again.fetched == 0, "{again:?}");
    assert_eq!(names_in(&b.files_dir()), ["shared"]);
    assert_eq!(names_in(&partial_dir(&b)), Vec::<String>::new());

    a.node.shutdown().await;
    b.node.shutdown().await;
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_versions_most_holders_wins_and_a_prefix_picks_the_other() {
    let tracker = TestTracker::start(HEARTBEAT).await;
    let popular = content(300_000, 7);
    let rare = content(123_456, 8);
    let popular_id = ContentId::of(&popular).to_hex();
    let rare_id = ContentId::of(&rare).to_hex();
    let a = TestPeer::start("A", tracker.addr, &[("doc", &popular)]).await;
    let b = TestPeer::start("B", tracker.addr, &[("doc", &popular)]).await;
    let c = TestPeer::start("C", tracker.addr, &[("doc", &rare)]).await;
    let d = TestPeer::start("D", tracker.addr, &[]).await;
    let e = TestPeer::start("E", tracker.addr, &[]).await;
    let mut client = tracker.client();
    assert_eq!(
        holders(&mut client, "doc").await,
        [
            (popular_id.clone(), vec!["A".to_string(), "B".to_string()]),
            (rare_id.clone(), vec!["C".to_string()]),
        ]
    );

    // No choice made: the version with most holders, and a note saying so.
    let report = get_ok(&d, "doc").await;
    assert_eq!(report.content_id.to_hex(), popular_id);
    let note = report.note.as_deref().expect("a note about the versions");
    assert!(note.contains("2 versions"), "{note}");
    assert!(note.contains(&popular_id[..12]), "{note}");
    assert_same_bytes(&d.files_dir().join("doc"), &popular);

    // A content id prefix picks the other version.
    let prefix = &rare_id[..8];
    let report = get_ok(&e, &format!("doc@{prefix}")).await;
    assert_eq!(report.content_id.to_hex(), rare_id);
    assert!(report.note.is_none(), "{:?}", report.note);
    let ids: Vec<&str> = report.holders.iter().map(|h| h.peer_id.as_str()).collect();
    assert_eq!(ids, ["C"]);
    assert_same_bytes(&e.files_dir().join("doc"), &rare);

    // A peer holding one version never has it overwritten by the other.
    match within("get other version", d.get(&format!("doc@{prefix}"))).await {
        Err(DownloadError::Store(StoreError::NameTaken(name))) => assert_eq!(name, "doc"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    assert_same_bytes(&d.files_dir().join("doc"), &popular);
    assert_eq!(names_in(&d.files_dir()), ["doc"]);
    assert_eq!(names_in(&partial_dir(&d)), Vec::<String>::new());

    // The tracker now sees three holders of the popular version and two of the rare one.
    assert_eq!(
        holders(&mut client, "doc").await,
        [
            (
                popular_id,
                vec!["A".to_string(), "B".to_string(), "D".to_string()]
            ),
            (rare_id, vec!["C".to_string(), "E".to_string()]),
        ]
    );

    for peer in [&a, &b, &c, &d, &e] {
        peer.node.shutdown().await;
    }
    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_selector_whose_name_and_content_id_disagree_is_not_found() {
    let tracker = TestTracker::start(HEARTBEAT).await;
    let a_bytes = content(5_000, 1);
    let b_bytes = content(6_000, 2);
    let peer = TestPeer::start("A", tracker.addr, &[("a", &a_bytes), ("b", &b_bytes)]).await;
    let mut client = peer_client(&peer);
    // peer.proto: "by name, by content id, or both (then they must agree)". This peer has no
    // file named "a" with b's content, so it must not answer with "b".
    let mismatched = || {
        Some(peer_pb::FileSelector {
            name: "a".into(),
            content_id: ContentId::of(&b_bytes).to_hex(),
        })
    };
    let info = within(
        "GetFileInfo",
        client.get_file_info(peer_pb::GetFileInfoRequest { file: mismatched() }),
    )
    .await;
    assert_eq!(
        info.as_ref()
            .map(|r| r.get_ref().name.clone())
            .map_err(|s| s.code()),
        Err(Code::NotFound),
        "{info:?}"
    );
    let request = peer_pb::GetBlocksRequest {
        file: mismatched(),
        first_block: 0,
        block_count: 1,
    };
    assert_eq!(get_blocks_code(&mut client, request).await, Code::NotFound);
    peer.node.shutdown().await;
    tracker.stop().await;
}
