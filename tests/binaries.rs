//! The real `tracker` and `peer` binaries, driven as a user would: the tracker on port 0 (its
//! port read from its first output line), seeders with `--no-shell`, and a peer whose shell is
//! fed commands on standard input. Every wait is bounded, and every child is killed at the end
//! even when an assertion fails.

mod common;

use common::content;
use p2pshare::pb::tracker as tracker_pb;
use p2pshare::pb::tracker::tracker_client::TrackerClient;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound on the tracker printing its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on seeders showing up at the tracker.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a scripted shell session running to its `exit`.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_STEP: Duration = Duration::from_millis(50);

/// Children of one test, with their stderr logs; all are killed when it ends, pass or fail.
struct Children {
    logs: PathBuf,
    running: Vec<(String, Child)>,
}

impl Children {
    fn new(logs: &Path) -> Self {
        Children {
            logs: logs.to_path_buf(),
            running: Vec::new(),
        }
    }

    /// Starts `command` with stderr to `<logs>/<name>.stderr`; stdout and stdin as configured by
    /// the caller.
    fn spawn(&mut self, name: &str, mut command: Command) -> &mut Child {
        let log = File::create(self.logs.join(format!("{name}.stderr"))).unwrap();
        let child = command
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.running.push((name.to_string(), child));
        &mut self.running.last_mut().unwrap().1
    }

    fn get(&mut self, name: &str) -> &mut Child {
        &mut self
            .running
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no child {name}"))
            .1
    }

    /// Panics (with its stderr) if `name` has exited.
    fn assert_alive(&mut self, name: &str) {
        if let Some(status) = self.get(name).try_wait().unwrap() {
            panic!(
                "{name} exited early ({status}); stderr:\n{}",
                self.stderr(name)
            );
        }
    }

    fn stderr(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.stderr"))).unwrap_or_default()
    }

    /// Sends SIGTERM to `name` (a graceful stop, as from a service manager).
    fn terminate(&mut self, name: &str) {
        let pid = self.get(name).id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits (bounded) for `name` to exit.
    fn wait(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.get(name).try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still running after {timeout:?}; stderr:\n{}",
                self.stderr(name)
            );
            std::thread::sleep(POLL_STEP);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Forwards each line of `stdout` to the returned channel, draining it to the end so the child
/// never blocks on a full pipe.
fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

/// Collects all of `stdout` (until the child closes it) on a thread.
fn all_of(mut stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// Starts `tracker --port 0 --heartbeat-interval 1` and returns its port, read from its
/// `tracker listening on 0.0.0.0:PORT` line.
fn start_tracker(children: &mut Children) -> u16 {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tracker"));
    command
        .args(["--port", "0", "--heartbeat-interval", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let stdout = children.spawn("tracker", command).stdout.take().unwrap();
    let lines = lines_of(stdout);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(address) = line.strip_prefix("tracker listening on ") {
                    let address: std::net::SocketAddr = address
                        .trim()
                        .parse()
                        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
                    assert!(address.ip().is_unspecified(), "{line}");
                    assert_ne!(address.port(), 0, "{line}");
                    return address.port();
                }
                seen.push(line);
            }
            Err(_) => panic!(
                "tracker printed no address within {STARTUP_TIMEOUT:?}; stdout {seen:?}; stderr:\n{}",
                children.stderr("tracker")
            ),
        }
    }
}

/// Starts a headless seeder `peer <id> 0 127.0.0.1:<tracker_port> --root <root> --no-shell`.
fn start_seeder(children: &mut Children, id: &str, tracker_port: u16, root: &Path) {
    let stdout = File::create(children.logs.join(format!("{id}.stdout"))).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_peer"));
    command
        .arg(id)
        .arg("0")
        .arg(format!("127.0.0.1:{tracker_port}"))
        .arg("--root")
        .arg(root)
        .arg("--no-shell")
        .stdin(Stdio::null())
        .stdout(stdout);
    children.spawn(id, command);
}

/// Runs `peer <id> 0 <tracker> --root <root>` with `script` on its standard input and returns
/// its standard output once it exits with success (bounded).
fn run_shell(
    children: &mut Children,
    id: &str,
    tracker: &str,
    root: &Path,
    script: &str,
) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_peer"));
    command
        .arg(id)
        .arg("0")
        .arg(tracker)
        .arg("--root")
        .arg(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let child = children.spawn(id, command);
    let output = all_of(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(script.as_bytes()).unwrap();
    drop(stdin); // End of input after the script.
    let stdout = output.recv_timeout(SESSION_TIMEOUT).unwrap_or_else(|_| {
        panic!(
            "{id}: shell did not finish within {SESSION_TIMEOUT:?}; stderr:\n{}",
            children.stderr(id)
        )
    });
    let status = children.wait(id, SESSION_TIMEOUT);
    assert!(
        status.success(),
        "{id} exited with {status}; stdout:\n{stdout}\nstderr:\n{}",
        children.stderr(id)
    );
    stdout
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls the tracker (bounded) until `name` is held by exactly `expected` (sorted ids), checking
/// that the seeders are still alive in between. Returns the holders' addresses, in that order.
fn wait_for_holders(
    children: &mut Children,
    tracker_port: u16,
    name: &str,
    expected: &[&str],
) -> Vec<String> {
    let rt = runtime();
    // A lazy channel spawns its connection task: it must be made inside the runtime.
    let _entered = rt.enter();
    let channel = p2pshare::grpc::channel(&format!("127.0.0.1:{tracker_port}")).unwrap();
    let mut client = TrackerClient::new(channel);
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    loop {
        let request = tracker_pb::WhoHasRequest {
            name: name.into(),
            content_id_prefix: String::new(),
            ..Default::default()
        };
        let answer = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), client.who_has(request)).await
        });
        let last = match answer {
            Ok(Ok(response)) => {
                let versions = response.into_inner().versions;
                let ids: Vec<String> = versions
                    .iter()
                    .flat_map(|v| v.holders.iter().map(|h| h.peer_id.clone()))
                    .collect();
                if versions.len() == 1 && ids == expected {
                    return versions[0]
                        .holders
                        .iter()
                        .map(|h| h.address.clone())
                        .collect();
                }
                format!("{versions:?}")
            }
            Ok(Err(status)) => format!("{status:?}"),
            Err(_) => "no answer within 5 s".into(),
        };
        for id in expected {
            children.assert_alive(id);
        }
        assert!(
            Instant::now() < deadline,
            "{expected:?} not registered as holders of {name} within {REGISTRATION_TIMEOUT:?}; last answer: {last}"
        );
        std::thread::sleep(POLL_STEP);
    }
}

/// The words of a line of output: runs of letters, digits, '.', '_' and '-'.
fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn shell_downloads_from_two_seeders_through_the_real_binaries() {
    if !common::require(common::program("kill", "stops a seeder with SIGTERM")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("swarm");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // Several pieces, a short last block.
    let original = content(3 * (1 << 20) + 4097, 9);
    for id in ["A", "B"] {
        let files = root.join(id).join("files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("f"), &original).unwrap();
    }
    let mut children = Children::new(&logs);
    let port = start_tracker(&mut children);
    start_seeder(&mut children, "A", port, &root);
    start_seeder(&mut children, "B", port, &root);
    let addresses = wait_for_holders(&mut children, port, "f", &["A", "B"]);

    let script = "whohas f\nfrobnicate now\nget f\nmyfiles\nexit\n";
    let stdout = run_shell(
        &mut children,
        "C",
        &format!("127.0.0.1:{port}"),
        &root,
        script,
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let id = p2pshare::chunking::ContentId::of(&original).to_hex();
    let short_id = &id[..12];
    // The commands' outputs follow each other in the order typed; the one bad command's error
    // line and the `got f` line divide them (the exact layout of tables is not the point here).
    let errors: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line expected; stdout:\n{stdout}"
    );
    let error = errors[0];
    assert!(lines[error].contains("frobnicate"), "{}", lines[error]);
    let got = lines
        .iter()
        .position(|l| words(l).starts_with(&["got", "f"]))
        .unwrap_or_else(|| panic!("no `got f` line; stdout:\n{stdout}"));
    assert!(
        error < got,
        "the shell must go on after the bad command; stdout:\n{stdout}"
    );

    // whohas (before the error line): the file's id and both holders with their addresses.
    let whohas = lines[..error].join("\n");
    assert!(
        whohas.contains(short_id),
        "whohas does not show {short_id}:\n{whohas}"
    );
    for (holder, address) in ["A", "B"].iter().zip(&addresses) {
        assert!(
            lines[..error]
                .iter()
                .any(|l| words(l).contains(holder) && l.contains(address.as_str())),
            "whohas does not show holder {holder} at {address}:\n{whohas}"
        );
    }

    // get: the file, its id, from both holders.
    let got_words = words(lines[got]);
    assert!(lines[got].contains(short_id), "{}", lines[got]);
    assert!(
        got_words.contains(&"A") && got_words.contains(&"B"),
        "the get report does not name both holders: {}",
        lines[got]
    );

    // myfiles (after the get): f with its id.
    assert!(
        lines[got + 1..]
            .iter()
            .any(|l| words(l).first() == Some(&"f") && l.contains(short_id)),
        "myfiles does not list f; stdout:\n{stdout}"
    );
    // The shell ran to `exit` and left the swarm.
    assert!(
        lines.last().is_some_and(|l| l.contains("left the swarm")),
        "stdout:\n{stdout}"
    );

    let copy = std::fs::read(root.join("C").join("files").join("f")).unwrap();
    assert!(copy == original, "C/files/f differs from the original");
    assert!(
        std::fs::read_dir(root.join("C").join(".p2pshare").join("partial"))
            .unwrap()
            .next()
            .is_none(),
        "stray partial files left"
    );

    // C left when its shell exited; a seeder stopped with SIGTERM leaves too, and exits cleanly.
    wait_for_holders(&mut children, port, "f", &["A", "B"]);
    children.terminate("A");
    let status = children.wait("A", SESSION_TIMEOUT);
    assert!(
        status.success(),
        "A exited with {status}; stderr:\n{}",
        children.stderr("A")
    );
    let a_stdout = std::fs::read_to_string(logs.join("A.stdout")).unwrap();
    assert!(
        a_stdout.lines().any(|l| l == "peer A left the swarm"),
        "A's stdout:\n{a_stdout}"
    );
    wait_for_holders(&mut children, port, "f", &["B"]);
}

#[test]
fn a_peer_without_a_tracker_starts_and_reports_it_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // A port with nothing listening: bound, then released.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut children = Children::new(&logs);
    let started = Instant::now();
    let stdout = run_shell(
        &mut children,
        "X",
        &format!("127.0.0.1:{port}"),
        tmp.path(),
        "whohas x\nmyfiles\nexit\n",
    );
    // A refused connection is reported at once, not after retries or long deadlines.
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "session took {elapsed:?}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let answers: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("error:") && lines[i].contains("tracker unreachable"))
        .collect();
    assert_eq!(answers.len(), 1, "stdout:\n{stdout}");
    // The shell went on: myfiles answered after the failure, and exit left cleanly.
    let rest = &lines[answers[0] + 1..];
    assert!(
        rest.len() >= 2 && rest.last().is_some_and(|l| l.contains("left the swarm")),
        "stdout:\n{stdout}"
    );
    assert!(
        !rest.iter().any(|l| l.starts_with("error:")),
        "stdout:\n{stdout}"
    );
    assert!(tmp.path().join("X").join("files").is_dir());
}

#[test]
fn exec_mode_runs_commands_and_exits_with_their_status() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("E/files")).unwrap();
    std::fs::write(tmp.path().join("E/files/a.txt"), b"abc").unwrap();
    // Nothing listens on this port: local commands work, tracker commands fail at once.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let exec = |commands: &str| {
        Command::new(env!("CARGO_BIN_EXE_peer"))
            .args([
                "E",
                "0",
                &format!("127.0.0.1:{port}"),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--root")
            .arg(tmp.path())
            .args(["--exec", commands])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = exec("myfiles --json");
    assert!(ok.status.success(), "{ok:?}");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    let json_line = stdout.lines().find(|l| l.starts_with('[')).unwrap();
    let files: serde_json::Value = serde_json::from_str(json_line).unwrap();
    assert_eq!(files[0]["name"], "a.txt");
    assert_eq!(files[0]["size"], 3);

    let failed = exec("myfiles; whohas a.txt");
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert!(stdout.contains("tracker unreachable"), "{stdout}");
}
