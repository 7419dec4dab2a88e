//! The client boundary (issue 12, items 1 and 7): nothing a tracker answers can crash a peer or
//! reach its terminal raw, and a connection failure's hint names the likely cause.
//!
//! A hostile tracker, written against the generated stubs, answers the real `peer` binary's
//! shell with content ids shorter than 12 bytes, with a multi-byte character across byte 12,
//! with escape sequences (clear screen, window title, colours, bidi overrides) in names, peer
//! ids and addresses, and with two valid versions of a file. The shell prints one clear line or
//! table for each command, downloads the valid version, keeps serving, and never writes a raw
//! ESC byte. Then: a malformed `Register` answer is refused in words, and a plaintext peer whose
//! tracker is down (a closed port, a port whose backlog is full so the connect times out, a
//! listener that never answers) gets no TLS hint, while one whose tracker speaks TLS does.
//!
//! Every wait is bounded; children are killed when a test ends, pass or fail.

// Answers are built with `..Default::default()` so that fields added to the messages later
// (backward compatible within v1) leave this fake tracker compiling.
#![allow(clippy::needless_update)]

mod common;
#[path = "boundary/support.rs"]
mod support;

use common::scripted_tracker::*;
use common::{content, TestPeer};
use p2pshare::chunking::ContentId;
use p2pshare::console::ProgressMode;
use p2pshare::grpc::{ServerSecurity, TlsIdentity};
use p2pshare::pb::peer as ppb;
use p2pshare::pb::peer::peer_client::PeerClient;
use p2pshare::pb::tracker as tpb;
use p2pshare::peer::shell::{execute, parse, Outcome};
use p2pshare::peer::{PeerConfig, PeerNode};
use proptest::prelude::*;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tracker_cannot_crash_or_garble_the_shell() {
    let data = content(300_000, 12);
    let real = ContentId::of(&data);
    let other = ContentId::of(b"other version");
    let unrelated = ContentId::of(b"unrelated");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The one honest holder, registered with a tracker of its own (which answers Register
    // honestly); the hostile tracker below lists it by address.
    let seeder_tracker = start_scripted_tracker(Answers {
        register: None,
        versions: vec![],
        files: vec![],
        peers: vec![],
    })
    .await;
    let seeder = TestPeer::start("S", seeder_tracker.addr, &[("f", &data)]).await;
    let s = seeder.node.local_addr().to_string();

    let junk_versions = vec![
        version("f", 5, "abc", vec![holder("S", &s)]),
        version("f", 5, &split_id(&real.to_hex()), vec![holder("S", &s)]),
        version(
            &format!("f{CLEAR}"),
            5,
            &unrelated.to_hex(),
            vec![holder("S", &s)],
        ),
    ];
    let mut f_versions = junk_versions.clone();
    f_versions.push(version(
        "f",
        data.len() as u64,
        &real.to_hex(),
        vec![
            holder("S", &s),
            holder(TITLE, &s),
            holder("E", &format!("{RED}:5")),
            holder(&format!("{RTL}R"), "127.0.0.1:1"),
        ],
    ));
    f_versions.push(version(
        "f",
        13,
        &other.to_hex(),
        vec![holder("Z", &closed.to_string())],
    ));
    let summary = |name: &str, content_id: &str| tpb::FileSummary {
        name: name.into(),
        size: data.len() as u64,
        content_id: content_id.into(),
        holder_count: 1,
        partial_holder_count: 0,
    };
    let peer = |peer_id: &str, address: &str| tpb::PeerSummary {
        peer_id: peer_id.into(),
        address: address.into(),
        file_count: 1,
        total_bytes: data.len() as u64,
    };
    let answers = Answers {
        register: None,
        versions: vec![("f".into(), f_versions), ("junk".into(), junk_versions)],
        files: vec![
            summary(CLEAR, &real.to_hex()),
            summary("f", "abc"),
            summary("g", &split_id(&real.to_hex())),
            summary("f", &real.to_hex()),
            summary(&format!("{RTL}gpj.exe"), &unrelated.to_hex()),
        ],
        peers: vec![
            peer("S", &s),
            peer(TITLE, &s),
            peer("B", &format!("{CLEAR}:1")),
            peer("C", "[::1]:0"),
        ],
    };
    let Running {
        addr: tracker,
        registered,
        ..
    } = start_scripted_tracker(answers).await;

    let tmp = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_shell("D", tracker, tmp.path());
    let script = format!(
        "whohas f\nwhohas junk\nwhohas nothing\nfiles\npeers\nwhohas f --json\nfiles --json\n\
         peers --json\nget f\n{SENTINEL}\n"
    );
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(script.as_bytes()).unwrap();
    let (output, lines) = lines_until(lines, SENTINEL).await;
    let text = output.join("\n");
    let stderr = || std::fs::read_to_string(tmp.path().join("D.stderr")).unwrap_or_default();

    // Nothing a terminal would obey, in the output or in the logs.
    assert!(
        !text.contains('\u{1b}') && !obeyable(&text),
        "stdout:\n{text:?}"
    );
    assert!(
        !stderr().contains('\u{1b}') && !obeyable(&stderr()),
        "stderr:\n{:?}",
        stderr()
    );
    assert!(!stderr().contains("panicked"), "stderr:\n{}", stderr());
    assert!(
        stderr().contains("malformed entries"),
        "one warning per answer:\n{}",
        stderr()
    );

    let has = |what: &str| output.iter().any(|l| l.contains(what));
    // The rows of the table under the header that starts with `header`.
    let rows_after = |header: &str, ends: &str| -> Vec<&String> {
        let start = output
            .iter()
            .position(|l| l.starts_with(header) && l.ends_with(ends))
            .unwrap_or_else(|| panic!("no {header:?} header in:\n{text}"));
        output[start + 1..]
            .iter()
            .take_while(|l| {
                !["error:", "NAME ", "PEER ", "[", "note:", "got "]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect()
    };
    // whohas f: the two valid versions, each with its valid holders only.
    let whohas = rows_after("NAME ", "WHO");
    assert_eq!(whohas.len(), 2, "{text}");
    assert!(
        whohas[0].starts_with("f ")
            && whohas[0].contains(&real.short())
            && whohas[0].ends_with(&format!("  1        S ({s})")),
        "{text}"
    );
    assert!(whohas[1].contains(&other.short()), "{text}");
    // whohas junk: one clear line.
    assert!(
        has(
            "error: the tracker's answer about \"junk\" had no valid version \
             (3 malformed entries skipped)"
        ),
        "{text}"
    );
    // whohas nothing: the tracker's refusal, escaped, on one line.
    assert!(
        output
            .iter()
            .any(|l| l == "error: tracker: \\x1b[2Jbad nothing\\x0asecond line"),
        "{text}"
    );
    // files and peers: only the valid entries.
    let files = rows_after("NAME ", "HOLDERS");
    assert_eq!(files.len(), 1, "{text}");
    assert!(
        files[0].starts_with("f ") && files[0].contains(&real.short()),
        "{text}"
    );
    let peers = rows_after("PEER ", "ADDRESS");
    assert_eq!(peers.len(), 1, "{text}");
    assert!(
        peers[0].starts_with("S ") && peers[0].ends_with(&s),
        "{text}"
    );
    // The --json lines: valid entries only.
    let json: Vec<serde_json::Value> = output
        .iter()
        .filter(|l| l.starts_with('['))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 3, "{text}");
    assert_eq!(
        json[0].as_array().unwrap().len(),
        2,
        "whohas --json: {}",
        json[0]
    );
    assert_eq!(
        json[0][0]["holders"].as_array().unwrap().len(),
        1,
        "{}",
        json[0]
    );
    assert_eq!(
        json[1].as_array().unwrap().len(),
        1,
        "files --json: {}",
        json[1]
    );
    assert_eq!(
        json[2].as_array().unwrap().len(),
        1,
        "peers --json: {}",
        json[2]
    );
    // get: the version with most holders, a note that there were two, the file in place.
    assert!(
        has(&format!(
            "note: 2 versions of \"f\" exist; picked {}",
            real.short()
        )),
        "{text}"
    );
    assert!(has("got f ("), "{text}\nstderr:\n{}", stderr());
    assert_eq!(std::fs::read(tmp.path().join("D/files/f")).unwrap(), data);
    // Three error lines: junk, nothing, and the sentinel.
    assert_eq!(
        output.iter().filter(|l| l.starts_with("error:")).count(),
        3,
        "{text}"
    );

    // The peer still serves: its Peer service answers for the file it just fetched.
    let port = registered
        .lock()
        .unwrap()
        .iter()
        .find(|(id, _)| id == "D")
        .map(|(_, port)| *port)
        .expect("D registered");
    let mut client =
        PeerClient::new(p2pshare::grpc::channel(&format!("127.0.0.1:{port}")).unwrap());
    let info = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_file_info(ppb::GetFileInfoRequest {
            file: Some(ppb::FileSelector {
                name: "f".into(),
                content_id: String::new(),
            }),
        }),
    )
    .await
    .expect("GetFileInfo answered in time")
    .unwrap()
    .into_inner();
    assert_eq!(info.content_id, real.to_hex());

    // And it leaves cleanly.
    stdin.write_all(b"exit\n").unwrap();
    drop(stdin);
    let (_, _) = lines_until(lines, "left the swarm").await;
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + SESSION_TIMEOUT;
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "D did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    seeder.node.shutdown().await;
}

#[tokio::test]
async fn a_malformed_registration_answer_is_refused_in_words() {
    let answer = |token: &str, address: &str| tpb::RegisterResponse {
        session_token: token.into(),
        heartbeat_interval_secs: u32::MAX,
        advertised_address: address.into(),
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    for (register, says) in [
        (
            answer("t", &format!("{CLEAR}{TITLE}:1")),
            "advertised address",
        ),
        (answer("t", ""), "advertised address"),
        (
            answer(&"t".repeat(1 << 20), "127.0.0.1:1"),
            "session token of 1048576 bytes",
        ),
        (answer("", "127.0.0.1:1"), "session token of 0 bytes"),
    ] {
        let tracker = start_scripted_tracker(Answers {
            register: Some(register),
            versions: vec![],
            files: vec![],
            peers: vec![],
        })
        .await;
        let config = PeerConfig::new("P", tmp.path().join("P"), &tracker.addr.to_string());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (node, info) = PeerNode::start(config, listener).await.unwrap();
        let error = info
            .registration
            .expect_err("a malformed answer is no registration");
        assert!(
            error.contains("the tracker's answer is malformed") && error.contains(says),
            "{error}"
        );
        assert!(!obeyable(&error) && error.len() < 200, "{error:?}");
        node.kill();
    }
}

/// Runs `peer X 0 <tracker> --exec "whohas x"` (plaintext) and returns its exit code and its
/// output (stdout, then stderr), bounded by [`SESSION_TIMEOUT`].
fn whohas_through_the_binary(tracker: SocketAddr, root: &Path) -> (Option<i32>, String) {
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_peer"))
            .args(["X", "0", &tracker.to_string(), "--bind", "127.0.0.1"])
            .arg("--root")
            .arg(root)
            .args(["--exec", "whohas x"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.0.stdout.take().unwrap()));
    let stderr = read(Box::new(child.0.stderr.take().unwrap()));
    let deadline = Instant::now() + SESSION_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "peer still running after {SESSION_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!("{}{}", stdout.join().unwrap(), stderr.join().unwrap());
    (status.code(), text)
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it
/// times out (a blackholed host, on loopback). Returns it with the connections that fill it.
async fn full_backlog() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut filling = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => filling.push(stream),
            _ => return (listener, filling),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

/// A self-signed certificate for 127.0.0.1 (the plaintext client never checks it).
fn tls_identity() -> TlsIdentity {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let certificate = params.self_signed(&key).unwrap();
    TlsIdentity::from_pem(certificate.pem(), key.serialize_pem()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_that_is_down_gets_no_tls_hint_and_a_tls_one_does() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The connect times out.
    let (blackhole, _filling) = full_backlog().await;
    // Connects, and never answers a byte.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    // A TLS tracker: a plaintext peer's failure there is a TLS mismatch.
    let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    tokio::spawn(p2pshare::tracker::serve_with_security(
        tls_listener,
        p2pshare::tracker::TrackerConfig::default(),
        ServerSecurity {
            swarm_key: None,
            tls: Some(tls_identity()),
        },
        std::future::pending(),
    ));

    let cases = [
        ("closed port", closed, false),
        ("full backlog", blackhole.local_addr().unwrap(), false),
        ("silent listener", silent_addr, false),
        ("TLS tracker", tls_addr, true),
    ];
    let runs: Vec<_> = cases
        .iter()
        .map(|&(what, addr, _)| {
            let root = tmp.path().join(what.replace(' ', "-"));
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let (code, text) = whohas_through_the_binary(addr, &root);
                (code, text, started.elapsed())
            })
        })
        .collect();
    for ((what, _, hinted), run) in cases.iter().zip(runs) {
        let (code, text, took) = run.await.unwrap();
        eprintln!("{what} ({took:?}):\n{text}");
        assert_eq!(code, Some(1), "{what}: whohas must fail:\n{text}");
        assert!(text.contains("tracker unreachable"), "{what}:\n{text}");
        assert_eq!(
            text.contains("--tls-ca"),
            *hinted,
            "{what}: TLS hint expected: {hinted}\n{text}"
        );
        // Start-up and the command each wait at most one call deadline (5 s).
        assert!(took < Duration::from_secs(20), "{what} took {took:?}");
    }
}

/// Arbitrary decoded tracker answers, fed to a real peer's shell commands (`whohas`, `files`,
/// `peers`, each also `--json`, and `get`): no panic, no character a terminal would obey in the
/// output, one line per checked entry at most, and a failure is one `error:` line.
#[test]
fn any_tracker_answer_through_the_shell_is_safe() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (tracker, node) = runtime.block_on(async {
        let tracker = start_scripted_tracker(Answers {
            register: None,
            versions: vec![],
            files: vec![],
            peers: vec![],
        })
        .await;
        let mut config = PeerConfig::new("P", tmp.path().join("P"), &tracker.addr.to_string());
        config.stall_timeout = Duration::from_secs(1);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (node, info) = PeerNode::start(config, listener).await.unwrap();
        assert!(info.registration.is_ok(), "{:?}", info.registration);
        (tracker, node)
    });
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        versions in prop::collection::vec(any_version(), 0..4),
        files in prop::collection::vec(any_file(), 0..4),
        peers in prop::collection::vec(any_peer(), 0..4),
    )| {
        let entries = [
            ("whohas", versions.len()),
            ("files", files.len()),
            ("peers", peers.len()),
            ("get", versions.len()),
        ];
        *tracker.answers.lock().unwrap() = Answers {
            register: None,
            versions: vec![("f".into(), versions)],
            files,
            peers,
        };
        for line in [
            "whohas f", "whohas f --json", "files", "files --json", "peers", "peers --json", "get f",
        ] {
            let mut out = Vec::new();
            let command = parse(line).unwrap();
            let outcome = runtime
                .block_on(async {
                    let run = execute(&node, command, &mut out, ProgressMode::Off);
                    tokio::time::timeout(SESSION_TIMEOUT, run).await
                })
                .expect("bounded")
                .unwrap();
            let text = String::from_utf8(out).unwrap();
            prop_assert!(!obeyable(&text), "{}: {:?}", line, text);
            let lines = text.lines().count();
            let entries = entries.iter().find(|(c, _)| line.starts_with(c)).unwrap().1;
            if outcome == Outcome::Failed {
                prop_assert_eq!(lines, 1, "{}: {:?}", line, text);
                prop_assert!(text.starts_with("error: "), "{}: {:?}", line, text);
            } else if line.ends_with("--json") {
                prop_assert_eq!(lines, 1, "{}: {:?}", line, text);
                let list: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert!(list.as_array().unwrap().len() <= entries);
            } else if !line.starts_with("get") {
                prop_assert!(lines <= 1 + entries, "{}: {:?}", line, text);
            }
        }
    });
    runtime.block_on(node.shutdown());
}
