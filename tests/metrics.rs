//! `--metrics-addr`: a tracker and peers with metrics on, scraped over HTTP; the counters move by
//! exactly what happened. The exporter's own answers (404, 405), and the binaries printing where
//! their metrics are.

mod common;

use common::{content, TestPeer};
use p2pshare::grpc::{ServerLimits, ServerSecurity, ServiceKind};
use p2pshare::metrics::Metrics;
use p2pshare::pb::peer as ppb;
use p2pshare::tracker::{TrackerConfig, TrackerLimits};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Longest any wait here may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// Metrics of one kind, served on a port of their own until `stop` is cancelled.
async fn exporter(kind: ServiceKind, stop: &CancellationToken) -> (Metrics, SocketAddr) {
    let metrics = Metrics::new(kind);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(p2pshare::metrics::serve(
        listener,
        metrics.clone(),
        stop.clone().cancelled_owned(),
    ));
    (metrics, addr)
}

/// One HTTP/1.1 request over a plain TCP connection: the status code and the body.
async fn http(addr: SocketAddr, request_line: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("{request_line} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("an answer in time");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header and a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Every sample of a scrape: the series (name and labels, as printed) -> its value.
async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = http(addr, "GET /metrics").await;
    assert_eq!(status, 200, "{body}");
    samples(&body)
}

fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

fn rpc(service: &str, method: &str, code: &str) -> String {
    format!(
        "p2pshare_rpcs_handled_total{{service=\"{service}\",method=\"{method}\",code=\"{code}\"}}"
    )
}

/// Sum of every code of one method.
fn calls(samples: &BTreeMap<String, f64>, service: &str, method: &str) -> f64 {
    let prefix = format!("p2pshare_rpcs_handled_total{{service=\"{service}\",method=\"{method}\",");
    samples
        .iter()
        .filter(|(series, _)| series.starts_with(&prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Scrapes until `ready` holds for a scrape (bounded), and returns that scrape.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    ready: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let samples = scrape(addr).await;
        if ready(&samples) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not so by the deadline in {samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const TRACKER: &str = "p2pshare.tracker.v1.Tracker";
const PEER: &str = "p2pshare.peer.v1.Peer";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_counts_registrations_bytes_downloads_and_codes() {
    let stop = CancellationToken::new();
    let (tracker_metrics, tracker_scrape) = exporter(ServiceKind::Tracker, &stop).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tracker = listener.local_addr().unwrap();
    let limits = ServerLimits {
        metrics: Some(tracker_metrics),
        ..ServerLimits::default()
    };
    tokio::spawn({
        let stop = stop.clone();
        async move {
            p2pshare::tracker::serve_configured(
                listener,
                TrackerConfig {
                    heartbeat_interval: Duration::from_secs(1),
                },
                TrackerLimits::default(),
                ServerSecurity::default(),
                &limits,
                stop.cancelled_owned(),
            )
            .await
        }
    });
    // Several pieces, one holder: no duplicate is ever fetched (the endgame helps only from
    // another holder), so bytes received are the file's size.
    let file = content(300_000, 15);
    let (holder_metrics, holder_scrape) = exporter(ServiceKind::Peer, &stop).await;
    let holder = TestPeer::start_with("holder", tracker, &[("f.bin", &file)], |c| {
        c.limits.connections.metrics = Some(holder_metrics)
    })
    .await;
    let (getter_metrics, getter_scrape) = exporter(ServiceKind::Peer, &stop).await;
    let getter = TestPeer::start_with("getter", tracker, &[], |c| {
        c.limits.connections.metrics = Some(getter_metrics)
    })
    .await;

    let report = getter.get("f.bin").await.expect("the download");
    assert_eq!(report.size, file.len() as u64);
    assert_eq!(
        std::fs::read(getter.files_dir().join("f.bin")).unwrap(),
        file
    );
    let missing = getter.get("nope.bin").await;
    assert!(missing.is_err(), "{missing:?}");

    // The tracker: two registrations, a NOT_FOUND answered trailers-only, and (at its next
    // expiry tick) two peers holding one file twice.
    let at_tracker = scrape_until(tracker_scrape, "the tracker's gauges", |s| {
        s.get("p2pshare_tracker_catalog_entries") == Some(&2.0)
    })
    .await;
    assert_eq!(value(&at_tracker, &rpc(TRACKER, "Register", "OK")), 2.0);
    assert_eq!(
        value(&at_tracker, &rpc(TRACKER, "WhoHas", "NOT_FOUND")),
        1.0
    );
    assert!(value(&at_tracker, &rpc(TRACKER, "WhoHas", "OK")) >= 1.0);
    assert_eq!(value(&at_tracker, "p2pshare_tracker_peers"), 2.0);
    assert_eq!(value(&at_tracker, "p2pshare_tracker_files"), 1.0);
    assert!(value(&at_tracker, "p2pshare_connections_open") >= 2.0);
    assert!(!at_tracker.keys().any(|k| k.starts_with("p2pshare_peer_")));

    // The holder served the file once, over streams that have all ended.
    let at_holder = scrape_until(holder_scrape, "the holder's streams ended", |s| {
        s.get(&format!(
            "p2pshare_rpcs_active{{service=\"{PEER}\",method=\"GetBlocks\"}}"
        )) == Some(&0.0)
    })
    .await;
    assert_eq!(
        value(&at_holder, "p2pshare_peer_served_bytes_total"),
        file.len() as f64
    );
    assert_eq!(holder.node.bytes_uploaded(), file.len() as u64);
    assert!(calls(&at_holder, PEER, "GetBlocks") >= 1.0);
    assert!(calls(&at_holder, PEER, "GetManifest") >= 1.0);
    assert_eq!(value(&at_holder, "p2pshare_connections_open"), 1.0);
    assert_eq!(
        value(
            &at_holder,
            "p2pshare_peer_downloads_total{outcome=\"completed\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &at_holder,
            "p2pshare_refusals_total{limit=\"upload_slots\"}"
        ),
        0.0
    );

    // The getter received it once, and counted one download completed and one failed.
    let at_getter = scrape(getter_scrape).await;
    assert_eq!(
        value(&at_getter, "p2pshare_peer_received_bytes_total"),
        file.len() as f64
    );
    for (outcome, count) in [("completed", 1.0), ("failed", 1.0), ("cancelled", 0.0)] {
        let series = format!("p2pshare_peer_downloads_total{{outcome=\"{outcome}\"}}");
        assert_eq!(value(&at_getter, &series), count, "{outcome}");
    }
    assert_eq!(
        value(&at_getter, "p2pshare_peer_pieces_rejected_total"),
        0.0
    );
    assert_eq!(value(&at_getter, "p2pshare_peer_served_bytes_total"), 0.0);
    stop.cancel();
}

/// A raw GetBlocks client: codes at the end of a stream and trailers-only, and a refusal by
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_count_their_final_code_and_refusals_their_limit() {
    let stop = CancellationToken::new();
    let tracker = common::TestTracker::start(Duration::from_secs(10)).await;
    // Larger than the client's stream window and the server's send buffer together, so a stream
    // left unread stays open (and holds its address's share) until the client drops it.
    let file = content(16 << 20, 16);
    let (metrics, scrape_at) = exporter(ServiceKind::Peer, &stop).await;
    let holder = TestPeer::start_with("holder", tracker.addr, &[("f.bin", &file)], |c| {
        c.limits.max_streams_per_address = 1;
        c.limits.connections.metrics = Some(metrics);
    })
    .await;
    let channel = p2pshare::grpc::channel(&holder.node.local_addr().to_string()).unwrap();
    let mut client = ppb::peer_client::PeerClient::new(channel);
    let blocks = |first_block, block_count| ppb::GetBlocksRequest {
        file: Some(ppb::FileSelector {
            name: "f.bin".into(),
            content_id: String::new(),
        }),
        first_block,
        block_count,
    };
    let whole = (file.len() as u64).div_ceil(4096);

    // Read to the end: OK, from the trailers after the data.
    let mut stream = client
        .get_blocks(blocks(0, whole))
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    while let Some(message) = stream.message().await.unwrap() {
        got += message.data.len();
    }
    assert_eq!(got, file.len());
    // Past the end: OUT_OF_RANGE, answered before any data (trailers-only).
    let past = client.get_blocks(blocks(whole, 1)).await.unwrap_err();
    assert_eq!(past.code(), tonic::Code::OutOfRange);
    // One stream open and unread; a second from the same address is over its share.
    let held = client.get_blocks(blocks(0, whole)).await.unwrap();
    let refused = client.get_blocks(blocks(0, 1)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    drop(held);

    // Dropped by its client before its status: CANCELLED.
    let samples = scrape_until(scrape_at, "the held stream ended", |s| {
        s.get(&rpc(PEER, "GetBlocks", "CANCELLED")) == Some(&1.0)
    })
    .await;
    assert_eq!(value(&samples, &rpc(PEER, "GetBlocks", "OK")), 1.0);
    assert_eq!(
        value(&samples, &rpc(PEER, "GetBlocks", "OUT_OF_RANGE")),
        1.0
    );
    assert_eq!(
        value(&samples, &rpc(PEER, "GetBlocks", "RESOURCE_EXHAUSTED")),
        1.0
    );
    assert_eq!(calls(&samples, PEER, "GetBlocks"), 4.0);
    assert_eq!(
        value(
            &samples,
            "p2pshare_refusals_total{limit=\"max_streams_per_address\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "p2pshare_refusals_total{limit=\"max_streams\"}"),
        0.0
    );
    assert!(value(&samples, "p2pshare_peer_served_bytes_total") >= file.len() as f64);
    stop.cancel();
    tracker.stop().await;
}

#[tokio::test]
async fn only_get_metrics_is_served() {
    let stop = CancellationToken::new();
    let (_metrics, addr) = exporter(ServiceKind::Tracker, &stop).await;
    let (status, body) = http(addr, "GET /").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = http(addr, "GET /metrics/extra").await;
    assert_eq!(status, 404);
    let (status, _) = http(addr, "POST /metrics").await;
    assert_eq!(status, 405);
    let (status, body) = http(addr, "GET /metrics").await;
    assert_eq!(status, 200);
    // Help and type on each series, zeros before anything happened.
    assert!(
        body.contains("# HELP p2pshare_tracker_peers Live peers registered"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE p2pshare_tracker_peers gauge\n"),
        "{body}"
    );
    assert!(body.contains("\np2pshare_tracker_peers 0\n"), "{body}");
    assert!(body.contains("\np2pshare_connections_open 0\n"), "{body}");
    stop.cancel();
}

/// Kills a child process when dropped (a failed assertion must not leave it running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a binary and returns it with the address of the line starting `prefix` (bounded).
fn start_until_line(mut command: Command, prefix: &str) -> (Killed, String) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Killed(command.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let rx = common::lines_of(stdout);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line {prefix:?} in time"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return (child, rest.to_string());
        }
    }
}

#[tokio::test]
async fn the_binaries_print_where_their_metrics_are() {
    let mut tracker = Command::new(env!("CARGO_BIN_EXE_tracker"));
    tracker.args([
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let (tracker_child, line) = start_until_line(tracker, "metrics at http://");
    let tracker_metrics: SocketAddr = line.strip_suffix("/metrics").unwrap().parse().unwrap();
    assert_ne!(tracker_metrics.port(), 0);
    let samples = scrape(tracker_metrics).await;
    assert_eq!(value(&samples, "p2pshare_tracker_peers"), 0.0);

    // A peer against a tracker that is not there: it serves anyway, metrics included.
    let root = tempfile::tempdir().unwrap();
    let mut peer = Command::new(env!("CARGO_BIN_EXE_peer"));
    peer.args([
        "p1",
        "0",
        "127.0.0.1:1",
        "--no-shell",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .arg("--root")
    .arg(root.path());
    let (peer_child, line) = start_until_line(peer, "metrics at http://");
    let peer_metrics: SocketAddr = line.strip_suffix("/metrics").unwrap().parse().unwrap();
    let samples = scrape(peer_metrics).await;
    assert_eq!(value(&samples, "p2pshare_peer_served_bytes_total"), 0.0);
    assert!(!samples.contains_key("p2pshare_tracker_peers"));
    drop(peer_child);
    drop(tracker_child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_counts_its_refusals_by_the_cap_that_refused() {
    use p2pshare::pb::tracker as tpb;
    let stop = CancellationToken::new();
    let (metrics, scrape_at) = exporter(ServiceKind::Tracker, &stop).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tracker = listener.local_addr().unwrap();
    let limits = ServerLimits {
        metrics: Some(metrics),
        ..ServerLimits::default()
    };
    let caps = TrackerLimits {
        max_peers: 1,
        max_files_per_peer: 2,
        ..TrackerLimits::default()
    };
    tokio::spawn({
        let stop = stop.clone();
        async move {
            p2pshare::tracker::serve_configured(
                listener,
                TrackerConfig::default(),
                caps,
                ServerSecurity::default(),
                &limits,
                stop.cancelled_owned(),
            )
            .await
        }
    });
    let mut client = tpb::tracker_client::TrackerClient::new(
        p2pshare::grpc::channel(&tracker.to_string()).unwrap(),
    );
    let register = |id: &str, files: usize| tpb::RegisterRequest {
        peer_id: id.into(),
        port: 7000,
        files: (0..files)
            .map(|i| {
                let name = format!("f{i}");
                tpb::FileEntry {
                    content_id: p2pshare::chunking::ContentId::of(name.as_bytes()).to_hex(),
                    size: 1,
                    name,
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    };
    // Too many files for one peer, then a second peer past --max-peers 1.
    let too_many = client.register(register("a", 3)).await.unwrap_err();
    assert_eq!(
        too_many.code(),
        tonic::Code::ResourceExhausted,
        "{too_many:?}"
    );
    client.register(register("a", 2)).await.unwrap();
    let full = client.register(register("b", 1)).await.unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");

    let samples = scrape(scrape_at).await;
    let refused = |limit: &str| {
        value(
            &samples,
            &format!("p2pshare_refusals_total{{limit=\"{limit}\"}}"),
        )
    };
    assert_eq!(refused("max_files_per_peer"), 1.0);
    assert_eq!(refused("max_peers"), 1.0);
    for other in ["max_peers_per_ip", "max_files_per_ip", "max_catalog_files"] {
        assert_eq!(refused(other), 0.0, "{other}");
    }
    assert_eq!(
        value(&samples, &rpc(TRACKER, "Register", "RESOURCE_EXHAUSTED")),
        2.0
    );
    // A tracker has no stream limits: those series are not shown.
    assert!(!samples.contains_key("p2pshare_refusals_total{limit=\"upload_slots\"}"));
    stop.cancel();
}
