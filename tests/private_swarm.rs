//! Private swarms: a shared swarm key and TLS (rustls), each optional. Real tracker and peers on
//! ephemeral loopback ports; certificates come from a throwaway CA made with `rcgen`, with the IP
//! subject alternative name 127.0.0.1 (peers are dialled by IP).
//!
//! What is checked: a whole swarm downloads byte-identical files with a key, with TLS, and with
//! both; calls without the key or with a wrong one are UNAUTHENTICATED on the tracker and on a
//! peer (health stays open), and the servers keep serving; a plaintext client of a TLS server, a
//! TLS client of a plaintext server and a TLS client trusting another CA all fail with a clear
//! error within a few seconds instead of hanging.

mod common;

use common::{content, TestPeer, TestTracker};
use p2pshare::grpc::{ClientSecurity, ServerSecurity, SwarmKey, TlsIdentity, TrustedCa};
use p2pshare::pb::peer as peer_pb;
use p2pshare::pb::peer::peer_client::PeerClient;
use p2pshare::pb::tracker as tracker_pb;
use p2pshare::peer::download::DownloadReport;
use p2pshare::peer::PeerConfig;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

/// Long enough that no peer expires during a test.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Upper bound on a download or a call that should succeed.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// A refused connection must be reported within this (the connect timeout is 3 s, the TLS
/// handshake timeout 10 s, but a mismatch is seen at the first bytes).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
const FILE_NAME: &str = "movie.bin";
const FILE_SIZE: usize = 3 * (1 << 20) + 12_345;
const KEY: &str = "0f3c1b9e5a7d2c4e6b8a0d1f3e5c7a9b";

async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// A throwaway certificate authority.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key).unwrap();
        TestCa {
            pem: certificate.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 (IP SAN) signed by this CA.
    fn leaf(&self, name: &str) -> TlsIdentity {
        self.leaf_for(name, "127.0.0.1")
    }

    /// A server certificate for `address` (an IP SAN for an IP, else a DNS SAN).
    fn leaf_for(&self, name: &str, address: &str) -> TlsIdentity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![address.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        TlsIdentity::from_pem(certificate.pem(), key.serialize_pem()).unwrap()
    }

    fn trusted(&self) -> TrustedCa {
        TrustedCa::from_pem(&self.pem).unwrap()
    }
}

/// How every member of a test swarm is set up.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Key,
    Tls,
    KeyAndTls,
}

/// A running private swarm: tracker, two seeders holding [`FILE_NAME`], a downloader.
struct PrivateSwarm {
    ca: Option<TestCa>,
    key: Option<SwarmKey>,
    tracker: TestTracker,
    seeders: Vec<TestPeer>,
    downloader: TestPeer,
    original: Vec<u8>,
}

impl PrivateSwarm {
    async fn start(mode: Mode) -> Self {
        let key = matches!(mode, Mode::Key | Mode::KeyAndTls).then(|| SwarmKey::new(KEY).unwrap());
        let ca =
            matches!(mode, Mode::Tls | Mode::KeyAndTls).then(|| TestCa::new("p2pshare test CA"));
        let tracker = TestTracker::start_secured(
            HEARTBEAT,
            ServerSecurity {
                swarm_key: key.clone(),
                tls: ca.as_ref().map(|ca| ca.leaf("tracker")),
            },
        )
        .await;
        let original = content(FILE_SIZE, 7);
        let member = |id: &str| {
            let key = key.clone();
            let tls = ca.as_ref().map(|ca| (ca.leaf(id), ca.trusted()));
            move |config: &mut PeerConfig| config.set_swarm_security(key, tls)
        };
        let mut seeders = Vec::new();
        for id in ["S1", "S2"] {
            seeders.push(
                TestPeer::start_with(id, tracker.addr, &[(FILE_NAME, &original)], member(id)).await,
            );
        }
        let downloader = TestPeer::start_with("D", tracker.addr, &[], member("D")).await;
        PrivateSwarm {
            ca,
            key,
            tracker,
            seeders,
            downloader,
            original,
        }
    }

    /// What a member presents when it calls.
    fn member_client(&self) -> ClientSecurity {
        ClientSecurity {
            swarm_key: self.key.clone(),
            tls_ca: self.ca.as_ref().map(TestCa::trusted),
        }
    }

    async fn download_and_check(&self) -> DownloadReport {
        let report = within("download", STEP_TIMEOUT, self.downloader.get(FILE_NAME))
            .await
            .unwrap_or_else(|e| panic!("download failed: {e}"));
        let got = std::fs::read(self.downloader.files_dir().join(FILE_NAME)).unwrap();
        assert!(
            got == self.original,
            "downloaded file differs from the original"
        );
        assert_eq!(report.size, FILE_SIZE as u64);
        assert_eq!(report.holders.len(), 2, "both seeders offered: {report:?}");
        assert!(
            report.holders.iter().all(|h| h.dropped.is_none()),
            "no holder may be dropped: {report:?}"
        );
        report
    }

    async fn stop(self) {
        self.downloader.node.shutdown().await;
        for seeder in &self.seeders {
            seeder.node.shutdown().await;
        }
        self.tracker.stop().await;
    }
}

fn peer_client(
    address: SocketAddr,
    security: &ClientSecurity,
) -> PeerClient<p2pshare::grpc::ClientChannel> {
    PeerClient::new(security.channel(&address.to_string()).unwrap())
}

fn file_info_request() -> peer_pb::GetFileInfoRequest {
    peer_pb::GetFileInfoRequest {
        file: Some(peer_pb::FileSelector {
            name: FILE_NAME.to_string(),
            content_id: String::new(),
        }),
    }
}

/// Calls the tracker (ListPeers) and a peer (GetFileInfo) as `security` and returns both
/// outcomes, each bounded by `limit`.
async fn call_both(
    swarm: &PrivateSwarm,
    security: &ClientSecurity,
    limit: Duration,
) -> (Result<usize, tonic::Status>, Result<u64, tonic::Status>) {
    let mut tracker = swarm.tracker.secured_client(security);
    let tracker_answer = within(
        "tracker call",
        limit,
        tracker.list_peers(tracker_pb::ListPeersRequest::default()),
    )
    .await
    .map(|r| r.into_inner().peers.len());
    let mut peer = peer_client(swarm.seeders[0].node.local_addr(), security);
    let peer_answer = within("peer call", limit, peer.get_file_info(file_info_request()))
        .await
        .map(|r| r.into_inner().size);
    (tracker_answer, peer_answer)
}

async fn health(address: SocketAddr, security: &ClientSecurity) -> ServingStatus {
    let mut client = HealthClient::new(security.channel(&address.to_string()).unwrap());
    let response = within(
        "health check",
        STEP_TIMEOUT,
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .unwrap();
    response.into_inner().status()
}

fn assert_unauthenticated<T: std::fmt::Debug>(
    what: &str,
    answer: Result<T, tonic::Status>,
    message: &str,
) {
    let status = answer.expect_err(&format!("{what} must be refused"));
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert!(
        status.message().contains(message),
        "{what}: message {:?} should say {message:?}",
        status.message()
    );
}

/// Asserts that `answer` (of a client presenting `security`) is a connection failure (not a
/// hang, not a success, not an answer from the service), and returns its explanation.
fn assert_refused<T: std::fmt::Debug>(
    what: &str,
    security: &ClientSecurity,
    answer: Result<T, tonic::Status>,
) -> String {
    let status = answer.expect_err(&format!("{what} must fail"));
    // tonic reports a connection that broke off as UNAVAILABLE or, when the server hangs up
    // after the client's first bytes, UNKNOWN with the transport error as its cause.
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{what}: {status:?}"
    );
    let text = security
        .explain_connection_failure(&status)
        .unwrap_or_else(|| panic!("{what}: not seen as a connection failure: {status:?}"));
    eprintln!("{what}: {text}");
    assert!(text.contains("TLS"), "{what}: no TLS hint in {text:?}");
    text
}

#[tokio::test]
async fn swarm_with_a_key_downloads_byte_identical() {
    let swarm = PrivateSwarm::start(Mode::Key).await;
    swarm.download_and_check().await;
    let (peers, size) = call_both(&swarm, &swarm.member_client(), STEP_TIMEOUT).await;
    assert_eq!(peers.unwrap(), 3);
    assert_eq!(size.unwrap(), FILE_SIZE as u64);
    swarm.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_key_is_unauthenticated_and_servers_keep_serving() {
    let swarm = PrivateSwarm::start(Mode::Key).await;

    let no_key = ClientSecurity::default();
    let (tracker, peer) = call_both(&swarm, &no_key, STEP_TIMEOUT).await;
    assert_unauthenticated("tracker without a key", tracker, "swarm key required");
    assert_unauthenticated("peer without a key", peer, "swarm key required");

    let wrong_key = ClientSecurity {
        swarm_key: Some(SwarmKey::new("not-the-swarm-key").unwrap()),
        tls_ca: None,
    };
    let (tracker, peer) = call_both(&swarm, &wrong_key, STEP_TIMEOUT).await;
    assert_unauthenticated("tracker with a wrong key", tracker, "wrong swarm key");
    assert_unauthenticated("peer with a wrong key", peer, "wrong swarm key");

    // A key that differs only in its last character, and a prefix of the key, are wrong too.
    for almost in [
        &KEY[..KEY.len() - 1],
        &format!("{}x", &KEY[..KEY.len() - 1]),
    ] {
        let almost = ClientSecurity {
            swarm_key: Some(SwarmKey::new(almost).unwrap()),
            tls_ca: None,
        };
        let (tracker, peer) = call_both(&swarm, &almost, STEP_TIMEOUT).await;
        assert_unauthenticated("tracker with a near-miss key", tracker, "wrong swarm key");
        assert_unauthenticated("peer with a near-miss key", peer, "wrong swarm key");
    }

    // The plain, keyless channel of `grpc::channel` (what other tests use) is refused too,
    // reflection included; health stays open for orchestrators.
    let mut plain = swarm.tracker.client();
    let answer = within(
        "plain tracker call",
        STEP_TIMEOUT,
        plain.who_has(tracker_pb::WhoHasRequest {
            name: FILE_NAME.to_string(),
            content_id_prefix: String::new(),
            ..Default::default()
        }),
    )
    .await;
    assert_unauthenticated("WhoHas without a key", answer, "swarm key required");
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut reflection = ServerReflectionClient::new(
            p2pshare::grpc::channel(&swarm.seeders[0].node.local_addr().to_string()).unwrap(),
        );
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let answer = within(
            "reflection",
            STEP_TIMEOUT,
            reflection.server_reflection_info(tokio_stream::iter([request])),
        )
        .await;
        assert_unauthenticated("reflection without a key", answer, "swarm key required");
    }
    assert_eq!(
        health(swarm.tracker.addr, &no_key).await,
        ServingStatus::Serving
    );
    assert_eq!(
        health(swarm.seeders[0].node.local_addr(), &no_key).await,
        ServingStatus::Serving
    );

    // A peer started with a wrong key is told so when it registers.
    let dir = tempfile::tempdir().unwrap();
    let wrong_member = p2pshare::peer::PeerNode::start(
        {
            let mut config =
                PeerConfig::new("W", dir.path().join("W"), &swarm.tracker.addr.to_string());
            config.set_swarm_security(Some(SwarmKey::new("guess").unwrap()), None);
            config
        },
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let registration = wrong_member.1.registration.clone();
    wrong_member.0.kill();
    let error = registration.expect_err("a peer with a wrong key must not register");
    assert!(error.contains("wrong swarm key"), "{error}");

    // The servers kept serving the swarm through all of that.
    let (peers, size) = call_both(&swarm, &swarm.member_client(), STEP_TIMEOUT).await;
    assert_eq!(peers.unwrap(), 3, "the wrong-key peer is not in the swarm");
    assert_eq!(size.unwrap(), FILE_SIZE as u64);
    swarm.download_and_check().await;
    swarm.stop().await;
}

#[tokio::test]
async fn swarm_over_tls_downloads_byte_identical() {
    let swarm = PrivateSwarm::start(Mode::Tls).await;
    swarm.download_and_check().await;
    let (peers, size) = call_both(&swarm, &swarm.member_client(), STEP_TIMEOUT).await;
    assert_eq!(peers.unwrap(), 3);
    assert_eq!(size.unwrap(), FILE_SIZE as u64);
    // Health answers over TLS too.
    assert_eq!(
        health(swarm.tracker.addr, &swarm.member_client()).await,
        ServingStatus::Serving
    );
    swarm.stop().await;
}

#[tokio::test]
async fn plaintext_or_untrusting_clients_of_tls_servers_are_refused_quickly() {
    let swarm = PrivateSwarm::start(Mode::Tls).await;

    // Plaintext against TLS: refused, not hung.
    let plaintext = ClientSecurity::default();
    let (tracker, peer) = call_both(&swarm, &plaintext, REFUSAL_TIMEOUT).await;
    assert_refused("plaintext client of the TLS tracker", &plaintext, tracker);
    assert_refused("plaintext client of a TLS peer", &plaintext, peer);

    // TLS trusting another CA: the certificate is rejected, and the error says so.
    let stranger = ClientSecurity {
        swarm_key: None,
        tls_ca: Some(TestCa::new("some other CA").trusted()),
    };
    let (tracker, peer) = call_both(&swarm, &stranger, REFUSAL_TIMEOUT).await;
    for (what, answer) in [
        (
            "TLS client of the tracker trusting another CA",
            tracker.map(|_| ()),
        ),
        ("TLS client of a peer trusting another CA", peer.map(|_| ())),
    ] {
        let text = assert_refused(what, &stranger, answer);
        assert!(text.contains("certificate"), "{what}: {text}");
    }

    // A certificate that does not name the address dialled is rejected as well.
    let ca = swarm.ca.as_ref().unwrap();
    let misnamed = TestTracker::start_secured(
        HEARTBEAT,
        ServerSecurity {
            swarm_key: None,
            tls: Some(ca.leaf_for("tracker", "10.9.8.7")),
        },
    )
    .await;
    let answer = within(
        "call to a tracker with a misnamed certificate",
        REFUSAL_TIMEOUT,
        misnamed
            .secured_client(&swarm.member_client())
            .list_peers(tracker_pb::ListPeersRequest::default()),
    )
    .await;
    let text = assert_refused(
        "TLS client of a tracker whose certificate names another IP",
        &swarm.member_client(),
        answer,
    );
    assert!(text.contains("certificate"), "{text}");
    misnamed.stop().await;

    // A plaintext peer cannot join: its registration fails with the tracker's address.
    let dir = tempfile::tempdir().unwrap();
    let plain_peer = p2pshare::peer::PeerNode::start(
        PeerConfig::new("P", dir.path().join("P"), &swarm.tracker.addr.to_string()),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (node, info) = within("plaintext peer start", STEP_TIMEOUT, plain_peer)
        .await
        .unwrap();
    node.kill();
    let error = info
        .registration
        .expect_err("a plaintext peer must not register with a TLS tracker");
    assert!(error.contains("unreachable"), "{error}");
    assert!(
        error.contains("--tls-ca"),
        "the error should hint at TLS: {error}"
    );

    // The servers kept serving the swarm.
    let (peers, size) = call_both(&swarm, &swarm.member_client(), STEP_TIMEOUT).await;
    assert_eq!(peers.unwrap(), 3);
    assert_eq!(size.unwrap(), FILE_SIZE as u64);
    swarm.stop().await;
}

#[tokio::test]
async fn tls_client_of_a_plaintext_server_is_refused_quickly() {
    let tracker = TestTracker::start(HEARTBEAT).await;
    let tls = ClientSecurity {
        swarm_key: None,
        tls_ca: Some(TestCa::new("p2pshare test CA").trusted()),
    };
    let mut client = tracker.secured_client(&tls);
    let answer = within(
        "TLS call to a plaintext tracker",
        REFUSAL_TIMEOUT,
        client.list_peers(tracker_pb::ListPeersRequest::default()),
    )
    .await;
    let text = assert_refused("TLS client of a plaintext tracker", &tls, answer);
    assert!(text.contains("plaintext server"), "{text}");
    tracker.stop().await;
}

#[tokio::test]
async fn swarm_with_key_and_tls_downloads_byte_identical() {
    let swarm = PrivateSwarm::start(Mode::KeyAndTls).await;
    swarm.download_and_check().await;

    // TLS alone is not membership: the key is still required.
    let tls_only = ClientSecurity {
        swarm_key: None,
        tls_ca: swarm.ca.as_ref().map(TestCa::trusted),
    };
    let (tracker, peer) = call_both(&swarm, &tls_only, STEP_TIMEOUT).await;
    assert_unauthenticated(
        "TLS tracker call without a key",
        tracker,
        "swarm key required",
    );
    assert_unauthenticated("TLS peer call without a key", peer, "swarm key required");

    let (peers, size) = call_both(&swarm, &swarm.member_client(), STEP_TIMEOUT).await;
    assert_eq!(peers.unwrap(), 3);
    assert_eq!(size.unwrap(), FILE_SIZE as u64);
    swarm.stop().await;
}

#[test]
fn bad_keys_and_pem_are_refused_clearly() {
    for bad in ["", "with space", "tab\tkey", "ünïcode", &"k".repeat(1025)] {
        let error = SwarmKey::new(bad).expect_err(bad);
        assert!(error.to_string().starts_with("bad swarm key"), "{error}");
    }
    assert!(SwarmKey::new(&"k".repeat(1024)).is_ok());
    // The key never shows in debug output.
    assert!(!format!("{:?}", SwarmKey::new(KEY).unwrap()).contains(KEY));

    let ca = TestCa::new("p2pshare test CA");
    assert!(TrustedCa::from_pem("not a certificate").is_err());
    assert!(TlsIdentity::from_pem(&ca.pem, "not a key").is_err());
    let error = TrustedCa::from_file(std::path::Path::new("/nonexistent/ca.pem")).unwrap_err();
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
}
