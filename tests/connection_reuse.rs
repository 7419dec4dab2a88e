//! Connections reused: a peer's downloads from one holder, one after another or at once, share
//! one connection to it; a connection that breaks is dialled afresh; a peer that shuts down
//! closes its connections. Connections are counted by a TCP relay in front of the holder (the
//! scripted tracker lists the relay as the holder's address).

mod common;

use common::scripted_tracker::{start_scripted_tracker, Answers};
use common::{content, TestPeer};
use p2pshare::chunking::ContentId;
use p2pshare::pb::tracker as tpb;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Upper bound on any step: a hang fails the test instead of blocking the suite.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP_TIMEOUT:?}"))
}

/// Polls `check` every 10 ms until it holds or [`STEP_TIMEOUT`] passes.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP relay to `target` that counts the connections it accepts and those still open, and can
/// cut every open one.
struct Relay {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    /// Replaced at each cut: the connections of the previous one end.
    cut: std::sync::Mutex<CancellationToken>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Arc::new(Relay {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            open: Arc::default(),
            cut: std::sync::Mutex::new(CancellationToken::new()),
        });
        let this = relay.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                this.accepted.fetch_add(1, Ordering::SeqCst);
                this.open.fetch_add(1, Ordering::SeqCst);
                let cut = this.cut.lock().unwrap().clone();
                let open = this.open.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        tokio::select! {
                            _ = cut.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        relay
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Drops every open connection (both ends see it closed).
    fn cut(&self) {
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }
}

/// A holder of `count` small files, a scripted tracker that lists it at the address of a relay
/// in front of it, and a downloader.
struct Setup {
    files: Vec<(String, Vec<u8>)>,
    relay: Arc<Relay>,
    downloader: TestPeer,
    _holder: TestPeer,
}

impl Setup {
    async fn start(count: usize) -> Self {
        let files: Vec<(String, Vec<u8>)> = (0..count)
            .map(|i| (format!("small-{i:03}"), content(4096, i as u64)))
            .collect();
        let tracker = start_scripted_tracker(Answers {
            register: None,
            versions: vec![],
            files: vec![],
            peers: vec![],
        })
        .await;
        let seeded: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let holder = TestPeer::start("H", tracker.addr, &seeded).await;
        let relay = Relay::start(holder.node.local_addr()).await;
        tracker.answers.lock().unwrap().versions = files
            .iter()
            .map(|(name, data)| {
                let version = tpb::FileVersion {
                    name: name.clone(),
                    size: data.len() as u64,
                    content_id: ContentId::of(data).to_hex(),
                    holders: vec![tpb::Holder {
                        peer_id: "H".into(),
                        address: relay.addr.to_string(),
                        partial: false,
                    }],
                };
                (name.clone(), vec![version])
            })
            .collect();
        let downloader = TestPeer::start("D", tracker.addr, &[]).await;
        Setup {
            files,
            relay,
            downloader,
            _holder: holder,
        }
    }

    /// Gets file `i` and checks it byte for byte.
    async fn get(&self, i: usize) {
        let (name, data) = &self.files[i];
        let report = within(&format!("get {name}"), self.downloader.get(name))
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"));
        assert_eq!(report.fetched, data.len() as u64, "{report:?}");
        assert_eq!(
            &std::fs::read(self.downloader.files_dir().join(name)).unwrap(),
            data
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gets_from_one_holder_share_one_connection() {
    let setup = Setup::start(28).await;
    for i in 0..20 {
        setup.get(i).await;
    }
    assert_eq!(setup.relay.accepted(), 1, "20 gets one after another");
    // Eight at once: still the one connection.
    let setup = Arc::new(setup);
    let mut gets = tokio::task::JoinSet::new();
    for i in 20..28 {
        let setup = setup.clone();
        gets.spawn(async move { setup.get(i).await });
    }
    while let Some(joined) = gets.join_next().await {
        joined.unwrap();
    }
    assert_eq!(setup.relay.accepted(), 1, "8 more gets at once");
    assert_eq!(setup.relay.open(), 1);
    // The downloader shuts down: it closes the connection.
    setup.downloader.node.shutdown().await;
    until("the connection closed", || setup.relay.open() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_connection_is_dialled_afresh() {
    let setup = Setup::start(3).await;
    setup.get(0).await;
    assert_eq!(setup.relay.accepted(), 1);
    setup.relay.cut();
    until("the cut connection gone", || setup.relay.open() == 0).await;
    // The next get succeeds on a new connection, and the one after reuses that.
    setup.get(1).await;
    assert_eq!(setup.relay.accepted(), 2);
    setup.get(2).await;
    assert_eq!(setup.relay.accepted(), 2);
}
