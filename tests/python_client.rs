//! The Python example client (`examples/python/p2pshare_client.py`) against the real binaries: a
//! client in another language, built only from the public `.proto` files, must find the holders of
//! a file and download it from all of them, byte for byte.
//!
//! The test makes a virtual environment under `target/tmp/` (reused while the requirements file
//! and the interpreter stay the same), installs `examples/python/requirements.txt` from PyPI,
//! generates the stubs with `python -m grpc_tools.protoc`, then starts a tracker and two seeders as
//! child processes on ephemeral loopback ports. It needs `python3` (3.9 or newer, with `venv` and
//! `pip`; `P2PSHARE_PYTHON` names another interpreter) and, the first time, PyPI; without them it
//! skips, saying so in one line (on CI it fails: see `common::require`).
//!
//! Every child process is killed when its guard drops, on success and on panic alike, and every
//! wait is bounded.

mod common;

use common::content;
use p2pshare::pb::tracker::tracker_client::TrackerClient;
use p2pshare::pb::tracker::WhoHasRequest;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Creating the virtual environment and installing the requirements (a cold pip cache downloads
/// about 10 MB of wheels).
const VENV_TIMEOUT: Duration = Duration::from_secs(600);
/// Generating the stubs, or one run of the client.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(90);
/// A server printing its address, or the tracker listing both seeders.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Size of the shared file: many 64 KiB pieces and a short last block, so that the download is
/// split across both holders.
const FILE_SIZE: usize = 3 * 1024 * 1024 + 12_345;
const FILE_NAME: &str = "payload.bin";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn client_dir() -> PathBuf {
    repo().join("examples/python")
}

/// A child process that is killed (and reaped) when this guard drops.
struct Guarded {
    child: Child,
    name: String,
}

impl Guarded {
    fn spawn(command: &mut Command, name: &str) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Guarded {
            child,
            name: name.to_string(),
        }
    }

    /// How the process ended, if it has.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited early ({status})", self.name)),
            _ => None,
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a bounded run produced.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `command` to completion within `limit`, its output captured in files under `logs` (files,
/// not pipes, so that a chatty child never blocks on a full pipe while we poll it).
fn run_bounded(command: &mut Command, name: &str, logs: &Path, limit: Duration) -> Run {
    std::fs::create_dir_all(logs).unwrap();
    let stdout_path = logs.join(format!("{name}.stdout"));
    let stderr_path = logs.join(format!("{name}.stderr"));
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut child = Guarded::spawn(command, name);
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                drop(child);
                panic!(
                    "{name} did not finish within {limit:?}: {command:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    read_lossy(&stdout_path),
                    read_lossy(&stderr_path)
                );
            }
            Err(e) => panic!("waiting for {name}: {e}"),
        }
    };
    Run {
        status,
        stdout: read_lossy(&stdout_path),
        stderr: read_lossy(&stderr_path),
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The interpreter to build the virtual environment from: Python 3.9 or newer with `venv` and
/// `ensurepip` (which gives the environment its pip).
fn system_python() -> Result<String, String> {
    let python = std::env::var("P2PSHARE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    const NEED: &str = "Python >= 3.9 with venv and pip (Debian: apt-get install python3 \
                        python3-venv python3-pip; or set P2PSHARE_PYTHON to an interpreter)";
    let output = match Command::new(&python)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            return Err(format!(
                "{NEED}: `{python} --version` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
        Err(e) => return Err(format!("{NEED}: cannot run `{python}` ({e})")),
    };
    // "Python 3.11.7" (older interpreters printed it on stderr).
    let version = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let numbers: Vec<u32> = version
        .trim()
        .trim_start_matches("Python ")
        .split('.')
        .take(2)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    if !(numbers.len() == 2 && (numbers[0], numbers[1]) >= (3, 9)) {
        return Err(format!("{NEED}: `{python}` is {:?}", version.trim()));
    }
    let modules = Command::new(&python)
        .args(["-c", "import venv, ensurepip"])
        .stdin(Stdio::null())
        .output();
    if !modules.as_ref().is_ok_and(|o| o.status.success()) {
        return Err(format!(
            "{NEED}: `{python}` has no venv or ensurepip module"
        ));
    }
    Ok(python)
}

/// Whether the package index pip uses answers, asked through `python` as pip would (same
/// proxies, `PIP_INDEX_URL` if set).
fn package_index(python: &str) -> common::Need {
    let index =
        std::env::var("PIP_INDEX_URL").unwrap_or_else(|_| "https://pypi.org/simple/".to_string());
    let probe = Command::new(python)
        .args([
            "-c",
            "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=20)",
        ])
        .arg(&index)
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "PyPI to install examples/python/requirements.txt ({index} did not answer: {})",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )),
        Err(e) => Err(format!("PyPI ({index} could not be asked: {e})")),
    }
}

/// A virtual environment with `examples/python/requirements.txt` installed, under
/// `target/tmp/python-client/`, keyed by the requirements' contents and the interpreter's version.
/// It is built in a scratch folder and renamed into place when complete, so an interrupted or
/// concurrent build never leaves a half-made environment under the final name. `Err` is a missing
/// need (no suitable Python, PyPI unreachable); anything else that goes wrong fails the test.
fn venv(logs: &Path) -> Result<PathBuf, String> {
    let python = system_python()?;
    let requirements = client_dir().join("requirements.txt");
    let wanted = std::fs::read(&requirements)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", requirements.display()));
    let version = Command::new(&python)
        .args(["-c", "import sys; print(sys.version)"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let mut key = blake3::Hasher::new();
    key.update(&wanted)
        .update(python.as_bytes())
        .update(&version);
    let key = key.finalize().to_hex();
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-client");
    let venv = base.join(format!("venv-{}", &key[..16]));
    if venv.join("bin/python").exists() {
        return Ok(venv);
    }

    std::fs::create_dir_all(&base).unwrap();
    let scratch = base.join(format!(".building-{}-{}", &key[..16], std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let made = run_bounded(
        Command::new(&python).arg("-m").arg("venv").arg(&scratch),
        "venv",
        logs,
        VENV_TIMEOUT,
    );
    assert!(
        made.status.success(),
        "`{python} -m venv` failed; this test needs Python's venv module with ensurepip \
         (Debian: apt-get install python3-venv)\n{}",
        made.describe()
    );
    let scratch_python = scratch.join("bin/python");
    let pip = run_bounded(
        Command::new(&scratch_python).args(["-m", "pip", "--version"]),
        "pip-version",
        logs,
        PYTHON_TIMEOUT,
    );
    assert!(
        pip.status.success(),
        "pip is not available in the new virtual environment (Debian: apt-get install python3-pip \
         python3-venv)\n{}",
        pip.describe()
    );
    let install = run_bounded(
        Command::new(&scratch_python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(["--timeout", "60", "-r"])
            .arg(&requirements),
        "pip-install",
        logs,
        VENV_TIMEOUT,
    );
    if !install.status.success() {
        let _ = std::fs::remove_dir_all(&scratch);
        // Only an index that cannot be reached is a missing need; any other failure is one.
        package_index(&python)?;
        panic!(
            "pip install -r {} failed although the index answers\n{}",
            requirements.display(),
            install.describe()
        );
    }
    // The environment is only ever run as `bin/python -m ...`, which does not depend on its path.
    if std::fs::rename(&scratch, &venv).is_err() {
        // Another run finished first: use its environment.
        let _ = std::fs::remove_dir_all(&scratch);
        assert!(
            venv.join("bin/python").exists(),
            "cannot move {} into place",
            scratch.display()
        );
    }
    Ok(venv)
}

/// Generates the Python stubs from `proto/` into `out` with `python -m grpc_tools.protoc`.
fn generate_stubs(python: &Path, out: &Path, logs: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let proto = repo().join("proto");
    let run = run_bounded(
        Command::new(python)
            .current_dir(&proto)
            .args(["-m", "grpc_tools.protoc", "-I."])
            .arg(format!("--python_out={}", out.display()))
            .arg(format!("--grpc_python_out={}", out.display()))
            .args(["tracker.proto", "peer.proto"]),
        "protoc",
        logs,
        PYTHON_TIMEOUT,
    );
    assert!(
        run.status.success(),
        "generating the stubs failed\n{}",
        run.describe()
    );
    for module in [
        "tracker_pb2.py",
        "tracker_pb2_grpc.py",
        "peer_pb2.py",
        "peer_pb2_grpc.py",
    ] {
        assert!(
            out.join(module).is_file(),
            "protoc did not produce {module}"
        );
    }
}

/// A tracker and seeders running as child processes, with their logs in `dir/logs`.
struct Swarm {
    dir: PathBuf,
    tracker: Guarded,
    tracker_port: u16,
    peers: Vec<(String, Guarded)>,
}

impl Swarm {
    fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Starts a tracker on an ephemeral loopback port and learns the port from its first line.
    fn start(dir: &Path) -> Swarm {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        // A long heartbeat interval: a killed peer stays listed (for 3 intervals), which the
        // failover step relies on.
        let mut tracker = Guarded::spawn(
            Command::new(env!("CARGO_BIN_EXE_tracker"))
                .args([
                    "--port",
                    "0",
                    "--bind",
                    "127.0.0.1",
                    "--heartbeat-interval",
                    "30",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(logs.join("tracker.stderr")).unwrap()),
            "tracker",
        );
        let stdout = tracker.child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        // Drains the tracker's stdout for its whole life; ends when the process does.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("tracker listening on ") {
                        let addr: SocketAddr = addr
                            .trim()
                            .parse()
                            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
                        break addr.port();
                    }
                }
                Err(_) => panic!(
                    "the tracker did not print `tracker listening on ADDR` within {STARTUP_TIMEOUT:?}\n{}",
                    read_lossy(&logs.join("tracker.stderr"))
                ),
            }
        };
        Swarm {
            dir: dir.to_path_buf(),
            tracker,
            tracker_port: port,
            peers: Vec::new(),
        }
    }

    fn tracker_address(&self) -> String {
        format!("127.0.0.1:{}", self.tracker_port)
    }

    /// Starts a headless peer sharing `files` (name, content).
    fn add_peer(&mut self, id: &str, files: &[(&str, &[u8])]) {
        let shared = self.dir.join(id).join("files");
        std::fs::create_dir_all(&shared).unwrap();
        for (name, bytes) in files {
            std::fs::write(shared.join(name), bytes).unwrap();
        }
        let logs = self.logs();
        let peer = Guarded::spawn(
            Command::new(env!("CARGO_BIN_EXE_peer"))
                .arg(id)
                .arg("0")
                .arg(self.tracker_address())
                .arg("--root")
                .arg(&self.dir)
                .args(["--no-shell", "--bind", "127.0.0.1"])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(logs.join(format!("{id}.stdout"))).unwrap())
                .stderr(std::fs::File::create(logs.join(format!("{id}.stderr"))).unwrap()),
            id,
        );
        self.peers.push((id.to_string(), peer));
    }

    /// Kills one peer at once (no Leave: the tracker still lists it for a while).
    fn kill_peer(&mut self, id: &str) {
        let index = self.peers.iter().position(|(p, _)| p == id).unwrap();
        drop(self.peers.remove(index));
    }

    /// Every process's output so far, for failure messages.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.logs())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                path.display(),
                read_lossy(&path)
            ));
        }
        out
    }

    /// Polls WhoHas until `name` has one version held by exactly `holders`; returns the
    /// advertised address of each holder.
    fn wait_for_holders(&mut self, name: &str, holders: &[&str]) -> Vec<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The channel spawns its connection task on the runtime it is made in.
        let _entered = runtime.enter();
        let channel = p2pshare::grpc::channel(&self.tracker_address()).unwrap();
        let mut client = TrackerClient::new(channel);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last = String::new();
        loop {
            let exited = std::iter::once(&mut self.tracker)
                .chain(self.peers.iter_mut().map(|(_, p)| p))
                .find_map(|p| p.exited());
            if let Some(exited) = exited {
                panic!("{exited}\nlast WhoHas: {last}\n{}", self.diagnostics());
            }
            let request = WhoHasRequest {
                name: name.to_string(),
                content_id_prefix: String::new(),
                ..Default::default()
            };
            let answer = runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.who_has(request)).await
            });
            match answer {
                Ok(Ok(response)) => {
                    let versions = response.into_inner().versions;
                    if let [version] = versions.as_slice() {
                        let ids: Vec<&str> =
                            version.holders.iter().map(|h| h.peer_id.as_str()).collect();
                        if ids == holders {
                            return version.holders.iter().map(|h| h.address.clone()).collect();
                        }
                    }
                    last = format!("{versions:?}");
                }
                Ok(Err(status)) => last = format!("{:?}: {}", status.code(), status.message()),
                Err(_) => last = "timed out".into(),
            }
            assert!(
                Instant::now() < deadline,
                "the tracker did not list {holders:?} as holders of {name:?} within {STARTUP_TIMEOUT:?}\nlast WhoHas: {last}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs the Python client with `args` after `--tracker`.
fn client(python: &Path, stubs: &Path, swarm: &Swarm, name: &str, args: &[&str]) -> Run {
    run_bounded(
        Command::new(python)
            .arg(client_dir().join("p2pshare_client.py"))
            .arg("--tracker")
            .arg(swarm.tracker_address())
            .arg("--build-dir")
            .arg(stubs)
            .args(args)
            // The client must not depend on proxies or on a cache of compiled modules.
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("grpc_proxy")
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        name,
        &swarm.logs(),
        PYTHON_TIMEOUT,
    )
}

fn json(run: &Run, what: &str) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e})\n{}", run.describe()))
}

#[test]
fn python_client_lists_holders_and_downloads_from_both() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("python-client-")
        .tempdir_in(base)
        .unwrap();
    let logs = tmp.path().join("logs");

    let Some(venv) = common::provided(venv(&logs)) else {
        return;
    };
    let python = venv.join("bin/python");
    let stubs = tmp.path().join("stubs");
    generate_stubs(&python, &stubs, &logs);

    let payload = content(FILE_SIZE, 7);
    let content_id = blake3::hash(&payload).to_hex().to_string();
    let mut swarm = Swarm::start(tmp.path());
    swarm.add_peer("seed-a", &[(FILE_NAME, &payload)]);
    swarm.add_peer("seed-b", &[(FILE_NAME, &payload)]);
    let addresses = swarm.wait_for_holders(FILE_NAME, &["seed-a", "seed-b"]);

    // whohas, as JSON: one version, both holders, at the addresses the tracker gave.
    let run = client(
        &python,
        &stubs,
        &swarm,
        "whohas-json",
        &["whohas", FILE_NAME, "--json"],
    );
    assert!(
        run.status.success(),
        "whohas failed\n{}\n{}",
        run.describe(),
        swarm.diagnostics()
    );
    let listed = json(&run, "whohas --json");
    let versions = listed["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 1, "{listed}");
    assert_eq!(versions[0]["name"], FILE_NAME);
    assert_eq!(versions[0]["size"], FILE_SIZE as u64);
    assert_eq!(versions[0]["content_id"], content_id.as_str());
    let holders: Vec<(&str, &str)> = versions[0]["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| {
            (
                h["peer_id"].as_str().unwrap(),
                h["address"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        holders,
        vec![
            ("seed-a", addresses[0].as_str()),
            ("seed-b", addresses[1].as_str())
        ]
    );

    // whohas, for people: both holders on their own lines.
    let run = client(&python, &stubs, &swarm, "whohas", &["whohas", FILE_NAME]);
    assert!(run.status.success(), "whohas failed\n{}", run.describe());
    assert!(run.stdout.contains(&content_id), "{}", run.describe());
    for (id, address) in &holders {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.split_whitespace().eq([*id, *address])),
            "whohas does not list {id} at {address}\n{}",
            run.describe()
        );
    }

    // get: the file, byte for byte, with pieces from both holders.
    let out = tmp.path().join("downloads").join(FILE_NAME);
    let out_arg = out.to_str().unwrap();
    let run = client(
        &python,
        &stubs,
        &swarm,
        "get",
        &["get", FILE_NAME, "--out", out_arg, "--json"],
    );
    assert!(
        run.status.success(),
        "get failed\n{}\n{}",
        run.describe(),
        swarm.diagnostics()
    );
    let got = std::fs::read(&out).expect("the downloaded file");
    assert!(
        got == payload,
        "downloaded {} bytes that differ from the {} shared",
        got.len(),
        payload.len()
    );
    let summary = json(&run, "get --json");
    assert_eq!(summary["verified"], true);
    assert_eq!(summary["content_id"], content_id.as_str());
    let piece_count = summary["piece_count"].as_u64().unwrap();
    assert!(piece_count > 2, "{summary}");
    let per_holder = &summary["pieces_by_holder"];
    let (a, b) = (
        per_holder["seed-a"].as_u64().unwrap(),
        per_holder["seed-b"].as_u64().unwrap(),
    );
    // Each holder's worker takes a piece as soon as it starts, so both serve at least one.
    assert!(
        a > 0 && b > 0,
        "the download was not split across both holders: {summary}"
    );
    assert_eq!(a + b, piece_count, "{summary}");

    // An unknown file: NOT_FOUND, exit status 1, nothing written.
    let missing = tmp.path().join("downloads").join("missing");
    let run = client(
        &python,
        &stubs,
        &swarm,
        "get-missing",
        &["get", "no-such-file", "--out", missing.to_str().unwrap()],
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr.contains("NOT_FOUND"),
        "no status code in the error\n{}",
        run.describe()
    );
    assert!(run.stderr.contains("no-such-file"), "{}", run.describe());
    assert!(!missing.exists());

    // A holder that died without leaving is still listed for a while: its pieces go to the other.
    swarm.kill_peer("seed-b");
    let again = tmp.path().join("downloads").join("again.bin");
    let run = client(
        &python,
        &stubs,
        &swarm,
        "get-failover",
        &["get", FILE_NAME, "--out", again.to_str().unwrap(), "--json"],
    );
    assert!(
        run.status.success(),
        "get with a dead holder failed\n{}\n{}",
        run.describe(),
        swarm.diagnostics()
    );
    assert!(
        std::fs::read(&again).unwrap() == payload,
        "failover download differs"
    );
    assert!(
        run.stderr.contains("seed-b"),
        "no warning about the dead holder\n{}",
        run.describe()
    );
    let summary = json(&run, "get --json after failover");
    assert_eq!(
        summary["pieces_by_holder"]["seed-a"].as_u64(),
        Some(piece_count),
        "{summary}"
    );
}
