//! The baseline every download ratio refers to: a plain file -> socket -> file copy between two
//! processes over loopback, with 1 MiB buffers at both ends; and its durable twin, the same copy
//! followed by `fdatasync` of the received file (what `get` into `files/` guarantees).

use crate::child::wait_bounded;
use crate::error::BenchError;
use crate::files::COPY_BUFFER;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Hidden subcommand of the bench binary that sends a file over TCP (the baseline's sender):
/// `__tcp-send <file> <addr>`.
pub(crate) const TCP_SEND_SUBCOMMAND: &str = "__tcp-send";

/// The baseline's sender (run in a child process): reads `file` and writes it to a TCP
/// connection to `addr`, then closes the connection.
pub(crate) fn tcp_send(file: &Path, addr: SocketAddr) -> std::io::Result<u64> {
    let mut source = std::fs::File::open(file)?;
    let mut socket = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    socket.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut sent = 0u64;
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        socket.write_all(&buf[..n])?;
        sent += n as u64;
    }
    socket.shutdown(std::net::Shutdown::Write)?;
    Ok(sent)
}

/// What one baseline copy took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyTime {
    /// From the accepted connection to the last byte written (and synced, if durable).
    pub(crate) total: Duration,
    /// The `fdatasync` at the end (zero if not durable).
    pub(crate) sync: Duration,
}

/// One baseline copy: a child process sends `file`, this process writes what arrives to `dest`,
/// then, if `durable`, runs `fdatasync` on it.
pub(crate) fn tcp_copy(
    exe: &Path,
    file: &Path,
    dest: &Path,
    size: u64,
    durable: bool,
) -> Result<CopyTime, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut child = Command::new(exe)
        .arg(TCP_SEND_SUBCOMMAND)
        .arg(file)
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let socket = loop {
        match listener.accept() {
            Ok((socket, _)) => break socket,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline || child.try_wait()?.is_some() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BenchError::Child("the TCP sender never connected".into()));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let started = Instant::now();
    let mut sync = Duration::ZERO;
    let copied = copy_to_file(socket, dest).and_then(|total| {
        if durable {
            let syncing = Instant::now();
            std::fs::File::open(dest)?.sync_data()?;
            sync = syncing.elapsed();
        }
        Ok(total)
    });
    let elapsed = started.elapsed();
    let status = wait_bounded(&mut child, Duration::from_secs(30))?;
    let copied = copied?;
    let _ = std::fs::remove_file(dest);
    if !status.success() || copied != size {
        return Err(BenchError::Child(format!(
            "TCP copy moved {copied} of {size} bytes (sender {status})"
        )));
    }
    Ok(CopyTime {
        total: elapsed,
        sync,
    })
}

/// Copies what arrives on `socket` to a new file `dest`, to the end (bounded by a read timeout),
/// with [`COPY_BUFFER`] reads: the receiving half of every plain TCP copy the bench measures.
pub(crate) fn copy_to_file(socket: std::net::TcpStream, dest: &Path) -> std::io::Result<u64> {
    let mut socket = socket;
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = std::fs::File::create(dest)?;
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(total)
}
