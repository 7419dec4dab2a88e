//! Floods (issue 12, items 2 and 3): one client address cannot take every upload slot, a client
//! that never reads loses its connection and everything buffered for it, idle connections are
//! closed, and connections are capped per address and per process.
//!
//! The attacker is a raw HTTP/2 client (the `h2` crate) on 127.0.0.2 that advertises a zero
//! stream window, so the server can send it no DATA at all; honest clients are tonic clients on
//! 127.0.0.1. Every wait is bounded and polled. The file-descriptor limit and the large flood
//! against a real `peer` process (memory measured from `/proc`) are in `tests/flood_process.rs`.

mod common;
#[path = "support/raw_h2.rs"]
mod raw_h2;

use bytes::Bytes;
use common::content;
use p2pshare::grpc::{
    ClientSecurity, ServerLimits, ServerSecurity, ServiceKind, TlsIdentity, TrustedCa,
};
use p2pshare::pb::peer as ppb;
use p2pshare::pb::peer::peer_client::PeerClient;
use p2pshare::peer::server::{PeerService, RateLimiter, ServeLimits};
use p2pshare::peer::store::Store;
use raw_h2::{get_blocks, health, Answer, Raw};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const ATTACKER: [u8; 4] = [127, 0, 0, 2];

/// A Peer service sharing `files` on 127.0.0.1, with explicit limits. Stops with the token.
async fn serve(
    files: &[(&str, &[u8])],
    limits: ServeLimits,
    connection: ServerLimits,
) -> (SocketAddr, CancellationToken, tempfile::TempDir) {
    serve_secured(files, limits, connection, ServerSecurity::default()).await
}

/// [`serve`] with TLS and/or a swarm key.
async fn serve_secured(
    files: &[(&str, &[u8])],
    limits: ServeLimits,
    connection: ServerLimits,
    security: ServerSecurity,
) -> (SocketAddr, CancellationToken, tempfile::TempDir) {
    let (tmp, dir) = common::seeded_dir("seeder", files);
    let (store, _) = Store::open(&dir).unwrap();
    store.rescan().unwrap();
    let service = PeerService::new(Arc::new(store), limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        p2pshare::grpc::serve_with_security(
            listener,
            tonic::service::Routes::new(service.into_server()),
            ServiceKind::Peer,
            &connection,
            &security,
            async move { token.cancelled().await },
        )
        .await
        .unwrap();
    });
    (addr, stop, tmp)
}

/// Opens `count` zero-window `GetBlocks` streams on `raw`: the ones held, and the refusals.
async fn open_streams(
    raw: &Raw,
    server: SocketAddr,
    blocks: u64,
    count: usize,
) -> (
    Vec<(h2::RecvStream, h2::SendStream<Bytes>)>,
    Vec<(i32, String)>,
) {
    let (mut held, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..count {
        match get_blocks(raw, server, "f", blocks).await.unwrap() {
            Answer::Held(recv, send) => held.push((recv, send)),
            Answer::Status(code, message) => refused.push((code, message)),
        }
    }
    (held, refused)
}

/// Reads all of `blocks` blocks of `f` with a tonic client from 127.0.0.1.
async fn honest_fetch(server: SocketAddr, blocks: u64) -> Result<Vec<u8>, tonic::Status> {
    honest_fetch_with(&ClientSecurity::default(), server, blocks).await
}

/// [`honest_fetch`] presenting `security` (a trusted CA for TLS).
async fn honest_fetch_with(
    security: &ClientSecurity,
    server: SocketAddr,
    blocks: u64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut client = PeerClient::new(security.channel(&server.to_string()).unwrap());
    let mut stream = client
        .get_blocks(ppb::GetBlocksRequest {
            file: Some(ppb::FileSelector {
                name: "f".into(),
                ..Default::default()
            }),
            first_block: 0,
            block_count: blocks,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        data.extend_from_slice(&message.data);
    }
    Ok(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_its_share_of_streams_and_no_more() {
    let data = content(4 << 20, 1);
    let blocks = (data.len() / 4096) as u64;
    let limits = ServeLimits {
        max_streams: 32,
        max_streams_per_address: 4,
        ..ServeLimits::default()
    };
    let (server, stop, _tmp) = serve(&[("f", &data)], limits, ServerLimits::default()).await;

    // The attacker asks for 10 streams it will never read: 4 are served, 6 refused at once.
    let attacker = Raw::connect(ATTACKER.into(), server, 0).await.unwrap();
    let (mut held, refused) = open_streams(&attacker, server, blocks, 10).await;
    assert_eq!(held.len(), 4);
    assert_eq!(refused.len(), 6);
    for (code, message) in &refused {
        assert_eq!(*code, raw_h2::RESOURCE_EXHAUSTED, "{message}");
        assert!(message.contains("from your address"), "{message}");
    }
    // A second connection from the same address gets nothing more.
    let second = Raw::connect(ATTACKER.into(), server, 0).await.unwrap();
    let (more, _) = open_streams(&second, server, blocks, 3).await;
    assert!(
        more.is_empty(),
        "a second connection got past the address's share"
    );
    // Another address is served in full, at once.
    let got = tokio::time::timeout(Duration::from_secs(20), honest_fetch(server, blocks))
        .await
        .expect("the honest client was kept waiting")
        .unwrap();
    assert!(got == data, "the honest client got wrong data");
    // A stream the attacker resets gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (again, _) = open_streams(&attacker, server, blocks, 1).await;
        if !again.is_empty() {
            held.extend(again);
            break;
        }
        assert!(Instant::now() < deadline, "a reset stream kept its place");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held.len(), 4);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_loses_its_connection_and_its_streams() {
    let data = content(8 << 20, 2);
    let blocks = (data.len() / 4096) as u64;
    let limits = ServeLimits {
        max_streams: 4,
        max_streams_per_address: 4,
        ..ServeLimits::default()
    };
    let connection = ServerLimits {
        client_stall_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    let (server, stop, _tmp) = serve(&[("f", &data)], limits, connection).await;

    let attacker = Raw::connect(ATTACKER.into(), server, 0).await.unwrap();
    let started = Instant::now();
    let (held, refused) = open_streams(&attacker, server, blocks, 4).await;
    assert_eq!((held.len(), refused.len()), (4, 0));
    // Every slot is taken: even another address is refused for now.
    let busy = honest_fetch(server, 1).await.unwrap_err();
    assert_eq!(busy.code(), tonic::Code::ResourceExhausted, "{busy:?}");
    // The server closes the connection after the stall timeout (not before)...
    assert!(
        attacker.ends_within(Duration::from_secs(10)).await,
        "the stalled connection was kept"
    );
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed after only {closed_after:?}"
    );
    // ...and every slot is free again, global and per address: the streams' bodies (and what
    // was buffered in them) went with the connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fresh = Raw::connect(ATTACKER.into(), server, 0).await.unwrap();
    let mut again = Vec::new();
    while again.len() < 4 {
        let (held, _) = open_streams(&fresh, server, blocks, 4 - again.len()).await;
        again.extend(held);
        assert!(
            Instant::now() < deadline,
            "slots of a closed connection were kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(again);
    drop(held);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_connections_with_calls_in_flight_are_not() {
    let data = content(4 << 20, 3);
    let blocks = (data.len() / 4096) as u64;
    // 1 MiB/s: the honest stream lasts about 3 s, three idle timeouts.
    let limits = ServeLimits {
        upload_rate: Some(Arc::new(RateLimiter::new(1 << 20))),
        ..ServeLimits::default()
    };
    let connection = ServerLimits {
        idle_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    let (server, stop, _tmp) = serve(&[("f", &data)], limits, connection).await;

    // A tonic client whose connection goes idle.
    let mut kept = PeerClient::new(p2pshare::grpc::channel(&server.to_string()).unwrap());
    let info = ppb::GetFileInfoRequest {
        file: Some(ppb::FileSelector {
            name: "f".into(),
            ..Default::default()
        }),
    };
    kept.get_file_info(info.clone()).await.unwrap();
    // A connection that never calls (its keepalive answered or not) is closed.
    let silent = Raw::connect(ATTACKER.into(), server, 65_535).await.unwrap();
    let started = Instant::now();
    // So is one whose only call ended.
    let once = Raw::connect(ATTACKER.into(), server, 65_535).await.unwrap();
    assert_eq!(health(&once, server).await.unwrap(), 0);
    let slow = tokio::spawn(honest_fetch(server, blocks));
    assert!(silent.ends_within(Duration::from_secs(5)).await);
    assert!(once.ends_within(Duration::from_secs(5)).await);
    assert!(started.elapsed() >= Duration::from_millis(950));
    // The tonic client's connection went idle before `silent` was opened, so it is closed too:
    // the client connects again by itself. A call that races the close is failed by tonic as a
    // connection failure (the channel learns of the close from that call), which is why the
    // download pool retries such a call once; the call after it connects afresh.
    if let Err(status) = kept.get_file_info(info.clone()).await {
        assert!(
            matches!(
                status.code(),
                tonic::Code::Cancelled | tonic::Code::Unavailable
            ),
            "not a connection failure: {status:?}"
        );
        kept.get_file_info(info).await.unwrap();
    }
    // A call in flight keeps its connection, however long it takes.
    let got = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("the slow stream never ended")
        .unwrap()
        .unwrap();
    assert!(got == data, "the slow stream was cut");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_per_process() {
    let connection = ServerLimits {
        max_connections: 3,
        max_connections_per_address: 2,
        ..ServerLimits::default()
    };
    let (server, stop, _tmp) = serve(&[("f", b"x")], ServeLimits::default(), connection).await;
    let from = |last: u8| IpAddr::from([127, 0, 0, last]);

    let a1 = Raw::connect(from(2), server, 65_535).await.unwrap();
    let a2 = Raw::connect(from(2), server, 65_535).await.unwrap();
    assert_eq!(health(&a1, server).await.unwrap(), 0);
    assert_eq!(health(&a2, server).await.unwrap(), 0);
    // A third from the same address is closed as soon as it is accepted.
    let a3 = Raw::connect(from(2), server, 65_535).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), health(&a3, server))
        .await
        .expect("the refused connection was left hanging");
    assert!(refused.is_err(), "{refused:?}");
    // Another address is served: three connections in all, the process cap.
    let b1 = Raw::connect(from(3), server, 65_535).await.unwrap();
    assert_eq!(health(&b1, server).await.unwrap(), 0);
    // A fourth waits, not accepted, until one of the three closes.
    let c1 = Raw::connect(from(4), server, 65_535).await.unwrap();
    let mut waiting = tokio::spawn(async move { health(&c1, server).await.map(|c| (c, c1)) });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a connection past the process cap was served"
    );
    drop(a1);
    let (code, _c1) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting connection was never accepted")
        .unwrap()
        .unwrap();
    assert_eq!(code, 0);
    drop((a2, b1));
    stop.cancel();
}

/// A throwaway CA's certificate and a server identity for 127.0.0.1 signed by it.
fn tls_pair() -> (TrustedCa, TlsIdentity) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    (
        TrustedCa::from_pem(&ca_pem).unwrap(),
        TlsIdentity::from_pem(leaf.pem(), key.serialize_pem()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_calls_are_tracked_per_connection_and_streams_capped_per_address() {
    let data = content(4 << 20, 4);
    let blocks = (data.len() / 4096) as u64;
    let (ca, identity) = tls_pair();
    let limits = ServeLimits {
        upload_rate: Some(Arc::new(RateLimiter::new(1 << 20))),
        max_streams_per_address: 1,
        ..ServeLimits::default()
    };
    let connection = ServerLimits {
        idle_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    let security = ServerSecurity {
        tls: Some(identity),
        ..ServerSecurity::default()
    };
    let (server, stop, _tmp) = serve_secured(&[("f", &data)], limits, connection, security).await;
    let client = ClientSecurity {
        tls_ca: Some(ca),
        ..ClientSecurity::default()
    };
    // A 3-second stream over TLS outlives three idle timeouts: its call is seen in flight.
    let start_slow = || {
        let client = client.clone();
        tokio::spawn(async move { honest_fetch_with(&client, server, blocks).await })
    };
    let mut slow = start_slow();
    // The address's one stream is taken: a second one is refused, so the address is known too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match honest_fetch_with(&client, server, 1).await {
            Err(status) => break status,
            Ok(_) => {
                if slow.is_finished() {
                    match slow.await.unwrap() {
                        // The probe took the address's one slot first: start it again.
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => slow = start_slow(),
                        ended => panic!(
                            "the slow stream is not counted for its address: it ended {:?}",
                            ended.map(|data| data.len())
                        ),
                    }
                }
                assert!(Instant::now() < deadline, "no stream was ever refused");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let got = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("the slow stream never ended")
        .unwrap()
        .unwrap();
    assert!(got == data, "the slow TLS stream was cut");
    stop.cancel();
}
