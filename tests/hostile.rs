//! Hostile input (issue 7): a peer shares only what it means to, and neither the tracker nor a
//! peer can be made to panic, to answer with a misleading code, to serve or touch anything outside
//! the peer's folder, or to stop serving others.
//!
//! Every scenario sends its bad requests through the real generated gRPC clients to in-process
//! servers on `127.0.0.1:0`, checks the exact status code, and then checks that the server still
//! answers a good request. Peers run in a [`Sandbox`]: their directory beside an `outside/` folder
//! whose files must never be served, changed or joined by new ones.

mod common;

use common::{content, TestPeer, TestTracker};
use p2pshare::chunking::ContentId;
use p2pshare::grpc::{ServerLimits, ServiceKind};
use p2pshare::pb::peer as ppb;
use p2pshare::pb::peer::peer_client::PeerClient;
use p2pshare::pb::tracker as tpb;
use p2pshare::pb::tracker::tracker_client::TrackerClient;
use p2pshare::peer::server::{PeerService, ServeLimits};
use p2pshare::peer::store::Store;
use p2pshare::peer::{PeerConfig, PeerNode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const MIB: usize = 1 << 20;
/// Size of the shared file `f` and of the secret outside: the same, so that only the path check
/// (not a size check) can keep the secret from being served when `f` is swapped for a symlink.
const F_LEN: usize = 3 * 4096 + 5;

/// File names no server may accept: each one escapes the folder, is not one path component, or
/// would confuse a terminal.
fn escaping_names() -> Vec<String> {
    vec![
        String::new(),
        ".".into(),
        "..".into(),
        "../outside/secret".into(),
        "../../etc/passwd".into(),
        "/etc/passwd".into(),
        "a/b".into(),
        "files/f".into(),
        "..\\outside\\secret".into(),
        "a\\b".into(),
        "f\0".into(),
        "a\0../b".into(),
        "bell\x07".into(),
        "new\nline".into(),
        "\x1b[2Jclear".into(),
        "del\x7f".into(),
        "c1\u{85}".into(),
        "\u{202E}txt.exe".into(),
        "x".repeat(256),
        "é".repeat(128), // 256 bytes, 128 characters
    ]
}

/// Peer ids no tracker may accept.
fn bad_peer_ids() -> Vec<String> {
    vec![
        String::new(),
        ".".into(),
        "..".into(),
        "../evil".into(),
        "a/b".into(),
        "a\\b".into(),
        ".hidden".into(),
        "nul\0".into(),
        "new\nline".into(),
        "space d".into(),
        "é".into(),
        "p".repeat(65),
    ]
}

fn malformed_content_ids() -> Vec<String> {
    let good = ContentId::of(b"x").to_hex();
    vec![
        "xyz".into(),
        good[..63].into(),
        format!("{good}0"),
        good.to_uppercase(),
        format!("{}g", &good[..63]),
        format!("{}é", &good[..62]),
        format!("{}\0", &good[..63]),
        "../".repeat(22)[..64].into(),
    ]
}

fn code<T>(result: Result<T, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn peer_client(addr: SocketAddr) -> PeerClient<Channel> {
    PeerClient::new(p2pshare::grpc::channel(&addr.to_string()).unwrap())
        .max_decoding_message_size(p2pshare::grpc::MAX_MESSAGE_SIZE)
}

fn by_name(name: &str) -> Option<ppb::FileSelector> {
    Some(ppb::FileSelector {
        name: name.into(),
        content_id: String::new(),
    })
}

fn by_content(content_id: &str) -> Option<ppb::FileSelector> {
    Some(ppb::FileSelector {
        name: String::new(),
        content_id: content_id.into(),
    })
}

fn blocks(
    file: Option<ppb::FileSelector>,
    first_block: u64,
    block_count: u64,
) -> ppb::GetBlocksRequest {
    ppb::GetBlocksRequest {
        file,
        first_block,
        block_count,
    }
}

/// Runs a whole `GetBlocks` call: the concatenated data, or the status it failed with (at the
/// call or in the stream).
async fn fetch(
    client: &mut PeerClient<Channel>,
    request: ppb::GetBlocksRequest,
) -> Result<Vec<u8>, Status> {
    let mut stream = client.get_blocks(request).await?.into_inner();
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        data.extend_from_slice(&message.data);
    }
    Ok(data)
}

/// Every metadata and data call on `file`, with the code each ended with.
async fn all_calls(client: &mut PeerClient<Channel>, file: Option<ppb::FileSelector>) -> [Code; 3] {
    let info = client
        .get_file_info(ppb::GetFileInfoRequest { file: file.clone() })
        .await;
    let manifest = client
        .get_manifest(ppb::GetManifestRequest { file: file.clone() })
        .await;
    let data = fetch(client, blocks(file, 0, 1)).await;
    if let Ok(data) = &data {
        assert_no_secret(data);
    }
    [code(info), code(manifest), code(data)]
}

/// The secrets kept outside the peer's folder.
fn secret() -> Vec<u8> {
    content(F_LEN, 666)
}

fn assert_no_secret(data: &[u8]) {
    let secret = secret();
    let needle = &secret[..64];
    assert!(
        !data.windows(needle.len()).any(|w| w == needle),
        "bytes of a file outside the peer's folder were served"
    );
}

/// A temporary tree: `peer/` (the peer's directory, with `files/`) beside `outside/`, whose
/// files the peer must never serve nor change.
struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("peer/files")).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::fs::write(tmp.path().join("outside/secret"), secret()).unwrap();
        std::fs::write(tmp.path().join("outside/passwd"), b"root:x:0:0").unwrap();
        Sandbox { tmp }
    }

    fn peer_dir(&self) -> PathBuf {
        self.tmp.path().join("peer")
    }

    fn files_dir(&self) -> PathBuf {
        self.peer_dir().join("files")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    fn share(&self, name: &str, data: &[u8]) {
        std::fs::write(self.files_dir().join(name), data).unwrap();
    }

    /// Nothing outside `peer/` was written: the same two files with the same bytes, nothing new
    /// beside them.
    fn assert_outside_untouched(&self) {
        assert_eq!(common::names_in(self.tmp.path()), ["outside", "peer"]);
        assert_eq!(common::names_in(&self.outside()), ["passwd", "secret"]);
        assert_eq!(
            std::fs::read(self.outside().join("secret")).unwrap(),
            secret()
        );
        assert_eq!(
            std::fs::read(self.outside().join("passwd")).unwrap(),
            b"root:x:0:0"
        );
    }

    /// A peer over `peer/` whose periodic rescan never comes during a test (its folder watcher
    /// still reports changes: tests that change `files/` behind a service use [`serve_store`]).
    async fn start_peer(
        &self,
        tracker: &TestTracker,
        configure: impl FnOnce(&mut PeerConfig),
    ) -> TestPeer {
        TestPeer::start_in("p", tracker.addr, self.peer_dir(), |c| {
            c.rescan_interval = Duration::from_secs(3600);
            configure(c);
        })
        .await
    }
}

/// A Peer service over `dir` served with explicit service and connection limits (what
/// `PeerNode` does with the defaults).
async fn serve_peer(
    dir: &Path,
    limits: ServeLimits,
    idle: Duration,
    connection: ServerLimits,
) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let (store, _) = Store::open(dir).unwrap();
    store.rescan().unwrap();
    let service = PeerService::new(Arc::new(store), limits).with_stream_idle_timeout(idle);
    serve_service(service, connection).await
}

/// The Peer service over `store` with the default limits. Unlike a [`PeerNode`], nothing watches
/// the folder: the store changes only when the test rescans it.
async fn serve_store(store: Arc<Store>) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let service = PeerService::new(store, ServeLimits::default());
    serve_service(service, ServerLimits::default()).await
}

async fn serve_service(
    service: PeerService,
    connection: ServerLimits,
) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        p2pshare::grpc::serve_with(
            listener,
            tonic::service::Routes::new(service.into_server()),
            ServiceKind::Peer,
            &connection,
            async move { token.cancelled().await },
        )
        .await
        .unwrap();
    });
    (addr, stop)
}

fn entry(name: &str, data: &[u8]) -> tpb::FileEntry {
    tpb::FileEntry {
        name: name.into(),
        size: data.len() as u64,
        content_id: ContentId::of(data).to_hex(),
        ..Default::default()
    }
}

fn register(peer_id: &str, port: u32, files: Vec<tpb::FileEntry>) -> tpb::RegisterRequest {
    tpb::RegisterRequest {
        peer_id: peer_id.into(),
        port,
        files,
        ..Default::default()
    }
}

async fn holders_of(tracker: &mut TrackerClient<Channel>, name: &str) -> Vec<(String, String)> {
    let versions = tracker
        .who_has(tpb::WhoHasRequest {
            name: name.into(),
            content_id_prefix: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    versions
        .into_iter()
        .flat_map(|v| v.holders)
        .map(|h| (h.peer_id, h.address))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tracker
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_refuses_escaping_names_and_bad_peer_ids_on_every_call() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let mut client = tracker.client();
    let good = client
        .register(register("good", 7001, vec![entry("f", b"data")]))
        .await
        .unwrap()
        .into_inner();
    let token = good.session_token.clone();

    for name in escaping_names() {
        let bad = || entry(&name, b"junk");
        let registered = client
            .register(register("other", 7002, vec![entry("ok", b"ok"), bad()]))
            .await;
        let announced = client
            .announce_file(tpb::AnnounceFileRequest {
                peer_id: "good".into(),
                session_token: token.clone(),
                file: Some(bad()),
            })
            .await;
        let withdrawn = client
            .withdraw_file(tpb::WithdrawFileRequest {
                peer_id: "good".into(),
                session_token: token.clone(),
                name: name.clone(),
            })
            .await;
        let asked = client
            .who_has(tpb::WhoHasRequest {
                name: name.clone(),
                content_id_prefix: String::new(),
                ..Default::default()
            })
            .await;
        assert_eq!(
            [
                code(registered),
                code(announced),
                code(withdrawn),
                code(asked)
            ],
            [Code::InvalidArgument; 4],
            "name {name:?}"
        );
    }
    for id in bad_peer_ids() {
        let registered = client.register(register(&id, 7003, vec![])).await;
        let beat = client
            .heartbeat(tpb::HeartbeatRequest {
                peer_id: id.clone(),
                session_token: token.clone(),
            })
            .await;
        let announced = client
            .announce_file(tpb::AnnounceFileRequest {
                peer_id: id.clone(),
                session_token: token.clone(),
                file: Some(entry("x", b"x")),
            })
            .await;
        let withdrawn = client
            .withdraw_file(tpb::WithdrawFileRequest {
                peer_id: id.clone(),
                session_token: token.clone(),
                name: "f".into(),
            })
            .await;
        let left = client
            .leave(tpb::LeaveRequest {
                peer_id: id.clone(),
                session_token: token.clone(),
            })
            .await;
        assert_eq!(
            [
                code(registered),
                code(beat),
                code(announced),
                code(withdrawn),
                code(left)
            ],
            [Code::InvalidArgument; 5],
            "peer id {id:?}"
        );
    }
    for content_id in malformed_content_ids() {
        let file = tpb::FileEntry {
            name: "ok".into(),
            size: 1,
            content_id,
            ..Default::default()
        };
        assert_eq!(
            code(client.register(register("other", 7002, vec![file])).await),
            Code::InvalidArgument
        );
    }
    for prefix in ["XYZ", "EA", "g", "0 ", &"0".repeat(65)] {
        let asked = client
            .who_has(tpb::WhoHasRequest {
                name: "f".into(),
                content_id_prefix: prefix.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(code(asked), Code::InvalidArgument, "prefix {prefix:?}");
    }
    assert_eq!(
        code(
            client
                .announce_file(tpb::AnnounceFileRequest {
                    peer_id: "good".into(),
                    session_token: token.clone(),
                    file: None,
                })
                .await
        ),
        Code::InvalidArgument
    );

    // Still serving, and nothing of the above got in.
    client
        .heartbeat(tpb::HeartbeatRequest {
            peer_id: "good".into(),
            session_token: token,
        })
        .await
        .unwrap();
    assert_eq!(holders_of(&mut client, "f").await.len(), 1);
    let peers = client
        .list_peers(tpb::ListPeersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .peers;
    assert_eq!(
        peers.iter().map(|p| p.peer_id.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    assert_eq!(peers[0].file_count, 1);
    let files = client
        .list_files(tpb::ListFilesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .files;
    assert_eq!(
        files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["f"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_tokens_protect_a_registered_peer() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let mut client = tracker.client();
    let victim = client
        .register(register("victim", 7100, vec![entry("f", b"real")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(victim.advertised_address, "127.0.0.1:7100");
    let expected = vec![("victim".to_string(), "127.0.0.1:7100".to_string())];

    for forged in ["", "forged", &"0".repeat(32), &victim.session_token[..31]] {
        let beat = client
            .heartbeat(tpb::HeartbeatRequest {
                peer_id: "victim".into(),
                session_token: forged.into(),
            })
            .await;
        let announced = client
            .announce_file(tpb::AnnounceFileRequest {
                peer_id: "victim".into(),
                session_token: forged.into(),
                file: Some(entry("planted", b"malware")),
            })
            .await;
        let withdrawn = client
            .withdraw_file(tpb::WithdrawFileRequest {
                peer_id: "victim".into(),
                session_token: forged.into(),
                name: "f".into(),
            })
            .await;
        let left = client
            .leave(tpb::LeaveRequest {
                peer_id: "victim".into(),
                session_token: forged.into(),
            })
            .await;
        assert_eq!(
            [code(beat), code(announced), code(withdrawn), code(left)],
            [Code::PermissionDenied; 4],
            "token {forged:?}"
        );
        assert_eq!(holders_of(&mut client, "f").await, expected);
    }
    let planted = client
        .who_has(tpb::WhoHasRequest {
            name: "planted".into(),
            content_id_prefix: String::new(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(planted), Code::NotFound);

    // Taking the id from another address: refused, whatever token is guessed.
    for token in ["", "forged"] {
        let mut request = register("victim", 7101, vec![entry("f", b"fake")]);
        request.session_token = token.into();
        let taken = client.register(request).await.unwrap_err();
        assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    }
    // Claiming the victim's very address from another IP does not make a "restart" either (and
    // would have handed out the victim's token).
    let elsewhere = Endpoint::from_shared(format!("http://{}", tracker.addr))
        .unwrap()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .connect_lazy();
    let mut from_elsewhere = TrackerClient::new(elsewhere);
    let mut claim = register("victim", 7100, vec![]);
    claim.advertise_host = "127.0.0.1".into();
    let claimed = from_elsewhere.register(claim).await.unwrap_err();
    assert_eq!(claimed.code(), Code::AlreadyExists, "{claimed:?}");
    assert_eq!(holders_of(&mut client, "f").await, expected);

    // The victim's session is intact.
    client
        .heartbeat(tpb::HeartbeatRequest {
            peer_id: "victim".into(),
            session_token: victim.session_token.clone(),
        })
        .await
        .unwrap();
    // Its own re-registration (with its token) keeps the token.
    let mut again = register("victim", 7100, vec![entry("f", b"real")]);
    again.session_token = victim.session_token.clone();
    let again = client.register(again).await.unwrap().into_inner();
    assert_eq!(again.session_token, victim.session_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_refuses_junk_addresses_and_ports() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let mut client = tracker.client();
    for port in [0, 65536, 70000, u32::MAX] {
        let refused = client.register(register("p", port, vec![])).await;
        assert_eq!(code(refused), Code::InvalidArgument, "port {port}");
    }
    for host in [
        "bad host!",
        "a:b:c",
        "host:80",
        "http://x",
        "a/b",
        "-lead",
        "a..b",
        ".",
        "0.0.0.0",
        "::",
        "[::]",
        "255.255.255.255",
        "224.0.0.1",
        "999.1.1.1",
        "1.2.3",
        "[host]",
        "x\n",
        "x\0",
        "\u{202E}x",
        &"h".repeat(64),
        &"a.".repeat(200),
    ] {
        let mut request = register("p", 7200, vec![]);
        request.advertise_host = host.into();
        let refused = client.register(request).await;
        assert_eq!(
            code(refused),
            Code::InvalidArgument,
            "advertise_host {host:?}"
        );
    }
    assert!(client
        .list_peers(tpb::ListPeersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .peers
        .is_empty());
    let mut good = register("p", 7200, vec![]);
    good.advertise_host = "::1".into();
    let answer = client.register(good).await.unwrap().into_inner();
    assert_eq!(answer.advertised_address, "[::1]:7200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_survives_huge_requests_and_absurd_sizes() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let mut client = tracker.client();
    // A catalog past the request limit: refused before it is read.
    let cid = ContentId::of(b"x").to_hex();
    let huge: Vec<tpb::FileEntry> = (0..25_000)
        .map(|i| tpb::FileEntry {
            name: format!("{i:0>200}"),
            size: 1,
            content_id: cid.clone(),
            ..Default::default()
        })
        .collect();
    let refused = client
        .register(register("big", 7300, huge))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("too large"), "{refused:?}");

    // Sizes are claims: summing them must not overflow, and a wrong size for a known content id
    // does not change the honest holders' version.
    let real = entry("f", b"real");
    let mut lie = real.clone();
    lie.size = u64::MAX;
    let mut lie2 = lie.clone();
    lie2.name = "g".into();
    client
        .register(register("liar", 7301, vec![lie, lie2]))
        .await
        .unwrap();
    client
        .register(register("h1", 7302, vec![real.clone()]))
        .await
        .unwrap();
    client
        .register(register("h2", 7303, vec![real]))
        .await
        .unwrap();
    let peers = client
        .list_peers(tpb::ListPeersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .peers;
    let liar = peers.iter().find(|p| p.peer_id == "liar").unwrap();
    assert_eq!(liar.total_bytes, u64::MAX);
    let versions = client
        .who_has(tpb::WhoHasRequest {
            name: "f".into(),
            content_id_prefix: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    let summary: Vec<(u64, usize)> = versions.iter().map(|v| (v.size, v.holders.len())).collect();
    assert_eq!(summary, [(4, 2), (u64::MAX, 1)]);
}

// ---------------------------------------------------------------------------------------------
// Peer: names, symlinks, content ids
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_refuses_escaping_names_and_malformed_content_ids() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let sandbox = Sandbox::new();
    let data = content(F_LEN, 1);
    sandbox.share("f", &data);
    let peer = sandbox.start_peer(&tracker, |_| {}).await;
    let mut client = peer_client(peer.node.local_addr());

    for name in escaping_names() {
        assert_eq!(
            all_calls(&mut client, by_name(&name)).await,
            [Code::InvalidArgument; 3],
            "name {name:?}"
        );
    }
    for content_id in malformed_content_ids() {
        assert_eq!(
            all_calls(&mut client, by_content(&content_id)).await,
            [Code::InvalidArgument; 3],
            "content id {content_id:?}"
        );
    }
    // A bad name is refused even next to a good content id.
    let both = Some(ppb::FileSelector {
        name: "../f".into(),
        content_id: ContentId::of(&data).to_hex(),
    });
    assert_eq!(
        all_calls(&mut client, both).await,
        [Code::InvalidArgument; 3]
    );
    // Nothing selected at all.
    assert_eq!(
        all_calls(&mut client, None).await,
        [Code::InvalidArgument; 3]
    );
    // Well-formed names of things that are not shared files: the peer's own state, the folder
    // itself, something absent.
    for name in [".p2pshare", "files", "peer", "outside", "secret", "nope"] {
        assert_eq!(
            all_calls(&mut client, by_name(name)).await,
            [Code::NotFound; 3],
            "name {name:?}"
        );
    }
    assert_eq!(
        all_calls(&mut client, by_content(&ContentId::of(&secret()).to_hex())).await,
        [Code::NotFound; 3]
    );

    // Still serving.
    let got = fetch(&mut client, blocks(by_name("f"), 0, 4))
        .await
        .unwrap();
    assert_eq!(got, data);
    peer.node.shutdown().await;
    sandbox.assert_outside_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn symlinks_pointing_out_are_never_served() {
    let sandbox = Sandbox::new();
    let data = content(F_LEN, 1);
    sandbox.share("f", &data);
    let files = sandbox.files_dir();
    std::os::unix::fs::symlink(sandbox.outside().join("secret"), files.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../outside/secret", files.join("rel-link")).unwrap();
    std::os::unix::fs::symlink(sandbox.outside(), files.join("dir-link")).unwrap();
    std::os::unix::fs::symlink("f", files.join("inner")).unwrap();
    // The service over a store that rescans only when told (a peer's folder watcher would notice
    // the swap below at once): what is checked is the service itself, serving a name the store
    // still lists after its file was swapped.
    let (store, _) = Store::open(&sandbox.peer_dir()).unwrap();
    store.rescan().unwrap();
    let store = Arc::new(store);
    let (addr, stop) = serve_store(store.clone()).await;
    let mut client = peer_client(addr);

    for name in ["abs-link", "rel-link", "dir-link"] {
        assert_eq!(
            all_calls(&mut client, by_name(name)).await,
            [Code::NotFound; 3],
            "{name}"
        );
    }
    assert_eq!(
        all_calls(&mut client, by_content(&ContentId::of(&secret()).to_hex())).await,
        [Code::NotFound; 3]
    );
    // A symlink that stays inside is shared like its target.
    assert_eq!(
        fetch(&mut client, blocks(by_name("inner"), 0, 4))
            .await
            .unwrap(),
        data
    );

    // Swap the shared file for a symlink pointing out (same size, so only the path check can
    // tell) before the peer rescans: it must not follow it, by name, by content or via `inner`.
    std::fs::remove_file(files.join("f")).unwrap();
    std::os::unix::fs::symlink(sandbox.outside().join("secret"), files.join("f")).unwrap();
    let cid = ContentId::of(&data).to_hex();
    for selector in [by_name("f"), by_content(&cid), by_name("inner")] {
        let served = fetch(&mut client, blocks(selector.clone(), 0, 4)).await;
        match served {
            Ok(bytes) => {
                assert_no_secret(&bytes);
                panic!(
                    "{selector:?}: served {} bytes of a file now outside",
                    bytes.len()
                );
            }
            Err(status) => assert_eq!(status.code(), Code::NotFound, "{selector:?}: {status:?}"),
        }
    }
    // Once rescanned, it is not shared any more, and the rest still is.
    let changes = store.rescan().unwrap();
    assert!(changes.removed.contains(&"f".to_string()), "{changes:?}");
    assert_eq!(
        all_calls(&mut client, by_name("f")).await,
        [Code::NotFound; 3]
    );
    std::fs::remove_file(files.join("f")).unwrap();
    std::fs::write(files.join("f"), &data).unwrap();
    store.rescan().unwrap();
    assert_eq!(
        fetch(&mut client, blocks(by_name("f"), 0, 4))
            .await
            .unwrap(),
        data
    );
    stop.cancel();
    sandbox.assert_outside_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_bad_id_creates_nothing() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let sandbox = Sandbox::new();
    for id in bad_peer_ids() {
        let dir = sandbox.outside().join("x").join(id.replace('\0', ""));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let started = PeerNode::start(
            PeerConfig::new(&id, dir, &tracker.addr.to_string()),
            listener,
        )
        .await;
        assert!(started.is_err(), "peer id {id:?} was accepted");
    }
    sandbox.assert_outside_untouched();
}

// ---------------------------------------------------------------------------------------------
// Peer: block ranges and request sizes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_ranges_are_checked_without_overflow() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let sandbox = Sandbox::new();
    let data = content(F_LEN, 1); // 4 blocks, the last of 5 bytes
    sandbox.share("f", &data);
    sandbox.share("empty", b"");
    let peer = sandbox.start_peer(&tracker, |_| {}).await;
    let mut client = peer_client(peer.node.local_addr());
    let f = || by_name("f");

    let cases: &[(u64, u64, Code)] = &[
        (4, 1, Code::OutOfRange),
        (0, 5, Code::OutOfRange),
        (3, 2, Code::OutOfRange),
        (1000, 1, Code::OutOfRange),
        (u64::MAX, 1, Code::OutOfRange),
        (1, u64::MAX, Code::OutOfRange),
        (0, u64::MAX, Code::OutOfRange),
        (u64::MAX, u64::MAX, Code::OutOfRange),
        (u64::MAX / 4096, 1, Code::OutOfRange),
        (0, 0, Code::InvalidArgument),
        (2, 0, Code::InvalidArgument),
        (u64::MAX, 0, Code::InvalidArgument),
    ];
    for &(first, count, want) in cases {
        let got = fetch(&mut client, blocks(f(), first, count)).await;
        assert_eq!(code(got), want, "blocks {first} + {count}");
    }
    for (first, count, want) in [(0, 1, Code::OutOfRange), (0, 0, Code::InvalidArgument)] {
        let got = fetch(&mut client, blocks(by_name("empty"), first, count)).await;
        assert_eq!(code(got), want, "empty file, blocks {first} + {count}");
    }
    // An empty range is malformed whatever the file; an absent file is not found.
    assert_eq!(
        code(fetch(&mut client, blocks(by_name("nope"), 0, 0)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(fetch(&mut client, blocks(by_name("nope"), 0, 1)).await),
        Code::NotFound
    );

    // Still serving, exactly.
    assert_eq!(
        fetch(&mut client, blocks(f(), 3, 1)).await.unwrap(),
        &data[3 * 4096..]
    );
    assert_eq!(
        fetch(&mut client, blocks(f(), 1, 2)).await.unwrap(),
        &data[4096..3 * 4096]
    );
    assert_eq!(fetch(&mut client, blocks(f(), 0, 4)).await.unwrap(), data);
    peer.node.shutdown().await;
    sandbox.assert_outside_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_requests_get_resource_exhausted_and_the_peer_keeps_serving() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let sandbox = Sandbox::new();
    let data = content(F_LEN, 1);
    sandbox.share("f", &data);
    let peer = sandbox.start_peer(&tracker, |_| {}).await;
    let mut client = peer_client(peer.node.local_addr());

    // Under the request limit but over the name limit: a plain bad name.
    let long = "n".repeat(10_000);
    assert_eq!(
        all_calls(&mut client, by_name(&long)).await,
        [Code::InvalidArgument; 3]
    );
    // Over the request limit, up to far over: refused before being read.
    for size in [70 * 1024, MIB, 16 * MIB] {
        let huge = "n".repeat(size);
        let started = Instant::now();
        let calls = [
            code(
                client
                    .get_file_info(ppb::GetFileInfoRequest {
                        file: by_name(&huge),
                    })
                    .await,
            ),
            code(
                client
                    .get_manifest(ppb::GetManifestRequest {
                        file: by_content(&huge),
                    })
                    .await,
            ),
            code(fetch(&mut client, blocks(by_name(&huge), 0, 1)).await),
        ];
        assert_eq!(
            calls,
            [Code::ResourceExhausted; 3],
            "request of {size} bytes"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        let info = client
            .get_file_info(ppb::GetFileInfoRequest { file: by_name("f") })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.size, F_LEN as u64);
    }
    let status = client
        .get_file_info(ppb::GetFileInfoRequest {
            file: by_name(&"n".repeat(MIB)),
        })
        .await
        .unwrap_err();
    assert!(status.message().contains("too large"), "{status:?}");
    // A range past the end is still OUT_OF_RANGE: the two stay distinguishable.
    assert_eq!(
        code(fetch(&mut client, blocks(by_name("f"), 9, 1)).await),
        Code::OutOfRange
    );
    assert_eq!(
        fetch(&mut client, blocks(by_name("f"), 0, 4))
            .await
            .unwrap(),
        data
    );
    peer.node.shutdown().await;
    sandbox.assert_outside_untouched();
}

// ---------------------------------------------------------------------------------------------
// Peer: stream limits
// ---------------------------------------------------------------------------------------------

/// Opens a `GetBlocks` stream over the whole of `f` on its own connection, and does not read it.
async fn hold_stream(
    addr: SocketAddr,
    blocks_in_f: u64,
) -> Result<tonic::Streaming<ppb::GetBlocksResponse>, Status> {
    let mut client = peer_client(addr);
    Ok(client
        .get_blocks(blocks(by_name("f"), 0, blocks_in_f))
        .await?
        .into_inner())
}

async fn drain(mut stream: tonic::Streaming<ppb::GetBlocksResponse>) -> Result<Vec<u8>, Status> {
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        data.extend_from_slice(&message.data);
    }
    Ok(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_past_the_limit_are_refused_while_the_others_complete() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let sandbox = Sandbox::new();
    // Far more than the buffers between a stream's reader and an idle client hold, so a stream
    // that is not read keeps its slot.
    let data = content(16 * MIB, 3);
    let block_count = (data.len() / 4096) as u64;
    sandbox.share("f", &data);
    let peer = sandbox
        .start_peer(&tracker, |c| c.limits.max_streams = 2)
        .await;
    let addr = peer.node.local_addr();

    let first = hold_stream(addr, block_count).await.unwrap();
    let second = hold_stream(addr, block_count).await.unwrap();
    let refused = hold_stream(addr, block_count).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Other calls are not limited.
    let mut client = peer_client(addr);
    client
        .get_file_info(ppb::GetFileInfoRequest { file: by_name("f") })
        .await
        .unwrap();

    let (a, b) = tokio::join!(drain(first), drain(second));
    assert!(
        a.unwrap() == data && b.unwrap() == data,
        "a held stream did not complete exactly"
    );
    // Their slots are free again.
    assert_eq!(
        fetch(&mut client, blocks(by_name("f"), 0, block_count))
            .await
            .unwrap(),
        data
    );
    peer.node.shutdown().await;
    sandbox.assert_outside_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_whose_client_stops_reading_is_ended_and_frees_its_slot() {
    let sandbox = Sandbox::new();
    let data = content(16 * MIB, 4);
    let block_count = (data.len() / 4096) as u64;
    sandbox.share("f", &data);
    let idle = Duration::from_secs(1);
    let limits = ServeLimits {
        max_streams: 1,
        ..ServeLimits::default()
    };
    let (addr, stop) = serve_peer(&sandbox.peer_dir(), limits, idle, ServerLimits::default()).await;

    let stalled = hold_stream(addr, block_count).await.unwrap();
    // The one slot is taken...
    let busy = hold_stream(addr, block_count).await.unwrap_err();
    assert_eq!(busy.code(), Code::ResourceExhausted);
    // ...until the idle client's stream is ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    let fresh = loop {
        match hold_stream(addr, block_count).await {
            Ok(stream) => break stream,
            Err(status)
                if status.code() == Code::ResourceExhausted && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("the stalled stream kept its slot: {status:?}"),
        }
    };
    // A client that reads gets everything.
    assert_eq!(drain(fresh).await.unwrap(), data);
    // The stalled client, reading at last, finds its stream ended with an error, not a clean
    // (truncated) end.
    let ended = drain(stalled).await.unwrap_err();
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    stop.cancel();
    sandbox.assert_outside_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_connection_cannot_take_every_stream() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let sandbox = Sandbox::new();
    let data = content(16 * MIB, 5);
    let block_count = (data.len() / 4096) as u64;
    sandbox.share("f", &data);
    // Both clients are on 127.0.0.1: the per-address cap (tests/flood.rs) must not bite first.
    let peer = sandbox
        .start_peer(&tracker, |c| {
            c.limits.max_streams_per_address = p2pshare::peer::server::DEFAULT_MAX_STREAMS
        })
        .await;
    let addr = peer.node.local_addr();
    let per_connection = ServerLimits::default().max_streams_per_connection as usize;
    assert!(per_connection < p2pshare::peer::server::DEFAULT_MAX_STREAMS);

    let greedy = peer_client(addr);
    let mut held = Vec::new();
    for _ in 0..per_connection {
        let mut client = greedy.clone();
        let stream = client
            .get_blocks(blocks(by_name("f"), 0, block_count))
            .await
            .unwrap();
        held.push(stream.into_inner());
    }
    // One more on the same connection waits for a slot of that connection...
    let mut extra = {
        let mut client = greedy.clone();
        tokio::spawn(async move { client.get_blocks(blocks(by_name("f"), 0, 1)).await })
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut extra)
            .await
            .is_err(),
        "a connection got more than {per_connection} streams"
    );
    // ...while another client is served at once.
    let mut other = peer_client(addr);
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        fetch(&mut other, blocks(by_name("f"), 0, 2)),
    )
    .await
    .expect("another connection was kept waiting")
    .unwrap();
    assert_eq!(got, &data[..8192]);
    // Closing one of the greedy streams lets the waiting one start. (Its data then competes for
    // the connection's flow-control window with the unread streams: drop those before reading.)
    drop(held.pop());
    let extra = tokio::time::timeout(Duration::from_secs(10), extra)
        .await
        .expect("the waiting stream never started")
        .unwrap()
        .unwrap();
    drop(held);
    assert_eq!(drain(extra.into_inner()).await.unwrap(), &data[..4096]);
    peer.node.shutdown().await;
    sandbox.assert_outside_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_never_arrives_is_cut_off() {
    let sandbox = Sandbox::new();
    sandbox.share("f", b"data");
    let connection = ServerLimits {
        request_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    let (addr, stop) = serve_peer(
        &sandbox.peer_dir(),
        ServeLimits::default(),
        Duration::from_secs(30),
        connection,
    )
    .await;
    // Open a unary call and never send its request message.
    let channel = p2pshare::grpc::channel(&addr.to_string()).unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let never = tokio_stream::pending::<ppb::GetFileInfoRequest>();
    let call = grpc.client_streaming(
        tonic::Request::new(never),
        tonic::codegen::http::uri::PathAndQuery::from_static("/p2pshare.peer.v1.Peer/GetFileInfo"),
        tonic_prost::ProstCodec::<ppb::GetFileInfoRequest, ppb::GetFileInfoResponse>::default(),
    );
    let cut = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the server waited for the request forever")
        .unwrap_err();
    assert_eq!(cut.code(), Code::Cancelled, "{cut:?}");
    let mut client = peer_client(addr);
    let info = client
        .get_file_info(ppb::GetFileInfoRequest { file: by_name("f") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.size, 4);
    stop.cancel();
    sandbox.assert_outside_untouched();
}
