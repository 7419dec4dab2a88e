//! A real `redis-server` for a test: on a free loopback port, nothing saved to disk, ready
//! (answering PING) before it is handed out, killed when dropped. Where `redis-server` is
//! missing, [`RedisServer::start`] prints one skip line and returns `None` (on CI it fails the
//! test: `.ci/run` installs the Debian package).

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
}

impl RedisServer {
    /// Starts one, or `None` (after one skip line) where `redis-server` is missing.
    pub fn start() -> Option<Self> {
        if !super::require(super::program(
            "redis-server",
            "the Redis store tests; Debian package redis-server",
        )) {
            return None;
        }
        // A free port can be taken by someone else between its probe and the server's bind:
        // a few tries.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start() {
                Ok(server) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn try_start() -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let child = spawn(port, dir.path())?;
        let mut server = RedisServer { port, child, dir };
        server.wait_ready()?;
        Ok(server)
    }

    /// Starts the server again on its port (after [`Self::kill`]), empty.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, self.dir.path()).unwrap();
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

/// `redis-server` on `port`, nothing saved, its working directory `dir`.
fn spawn(port: u16, dir: &std::path::Path) -> Result<Child, String> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run redis-server: {e}"))
}
