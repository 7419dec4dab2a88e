//! A real `redis-server` for a test: on a free loopback port, nothing saved to disk, ready
//! (answering PING) before it is handed out, killed when dropped. Where `redis-server` is
//! missing, [`RedisServer::start`] prints one skip line and returns `None` (on CI it fails the
//! test: `.ci/run` installs the Debian package). [`RedisCluster`] (in `redis/cluster.rs`) is
//! three of them as one Redis Cluster.

mod cluster;
#[allow(unused_imports)] // Only the Cluster tests use it.
pub use cluster::RedisCluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` process of this test.
pub struct RedisServer {
    /// Its loopback port.
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    /// Its options beyond the port, the address and persistence (a Cluster node's).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one, or `None` (after one skip line) where `redis-server` is missing.
    pub fn start() -> Option<Self> {
        if !installed() {
            return None;
        }
        Some(Self::start_with(|_| Vec::new()))
    }

    /// Starts one with the options `extra` gives for its port (`redis-server` is there).
    fn start_with(extra: impl Fn(u16) -> Vec<String>) -> Self {
        // A free port can be taken by someone else between its probe and the server's bind:
        // a few tries.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&extra) {
                Ok(server) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn try_start(extra: impl Fn(u16) -> Vec<String>) -> Result<Self, String> {
        let port = free_port()?;
        let extra = extra(port);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let child = spawn(port, dir.path(), &extra)?;
        let mut server = RedisServer {
            port,
            child,
            dir,
            extra,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Starts the server again on its port (after [`Self::kill`]), empty.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, self.dir.path(), &self.extra).unwrap();
        self.wait_ready().unwrap();
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("redis-server exited: {status}"));
            }
            if ping(self.addr()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!("no PONG within {READY_TIMEOUT:?}"))
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection, to look at or spoil what the trackers wrote.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connect to the test's redis-server")
    }

    /// Kills the server (and waits for it): Redis is down from here on.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `redis-server` is installed (one skip line when not).
fn installed() -> bool {
    super::require(super::program(
        "redis-server",
        "the Redis store tests; Debian package redis-server",
    ))
}

/// A loopback port free now.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Whether a Redis server at `addr` answers PING (within a second).
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// `redis-server` on `port`, nothing saved, its working directory `dir`, and `extra`.
fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> Result<Child, String> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run redis-server: {e}"))
}
