//! One accepted connection as tonic serves it: a TCP stream the server can close from outside.

use super::{Connection, Connections};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Holds a connection's place in the caps until it is dropped.
pub(super) struct Slot {
    pub(super) connections: Arc<Connections>,
    pub(super) remote: SocketAddr,
    pub(super) ip: IpAddr,
    pub(super) _permit: OwnedSemaphorePermit,
}

/// An accepted TCP connection that the server can close: once closed, reads and writes fail,
/// and hyper drops the connection.
pub(in crate::grpc) struct GuardedIo {
    pub(super) stream: TcpStream,
    pub(super) closed: Pin<Box<WaitForCancellationFutureOwned>>,
    pub(super) connection: Arc<Connection>,
    pub(super) _slot: Slot,
}

impl Drop for GuardedIo {
    fn drop(&mut self) {
        let slot = &self._slot;
        slot.connections
            .forget(slot.remote, slot.ip, &self.connection);
    }
}

impl GuardedIo {
    /// `Err` once the server closed this connection (and registers `cx` to learn it).
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.connection.close.is_cancelled() || self.closed.as_mut().poll(cx).is_ready() {
            return Err(self.connection.closed_error());
        }
        Ok(())
    }
}

impl Connected for GuardedIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_open(cx)?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
