//! The accept loop: capped per process, counted per address, backing off on errors that are not
//! about one connection (see the parent module).

use super::{Connections, GuardedIo};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// First wait after an accept error that is not about one connection.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between accept attempts while they keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The accept loop as the stream of connections tonic serves: capped, counted, backing off on
/// errors (see the module documentation). It never yields an error.
pub(in crate::grpc) struct Incoming {
    listener: TcpListener,
    connections: Arc<Connections>,
    cap: usize,
    slots: PollSemaphore,
    /// A slot taken for the next connection accepted.
    slot: Option<OwnedSemaphorePermit>,
    at_cap: bool,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    next_backoff: Duration,
    /// Accept errors in a row.
    failures: u64,
}

impl Incoming {
    pub(in crate::grpc) fn new(
        listener: TcpListener,
        connections: Arc<Connections>,
        cap: usize,
    ) -> Self {
        let cap = cap.clamp(1, Semaphore::MAX_PERMITS);
        Incoming {
            listener,
            connections,
            cap,
            slots: PollSemaphore::new(Arc::new(Semaphore::new(cap))),
            slot: None,
            at_cap: false,
            backoff: None,
            next_backoff: FIRST_BACKOFF,
            failures: 0,
        }
    }

    fn accept_failed(&mut self, error: &io::Error) {
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(%error, "accepting connections failed; retrying with a backoff up to 1 s");
        } else {
            tracing::debug!(%error, failures = self.failures, "accepting connections failed again");
        }
        self.backoff = Some(Box::pin(tokio::time::sleep(self.next_backoff)));
        self.next_backoff = (self.next_backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether an accept error concerns only the connection being accepted (it is gone; the next
/// one may be fine), as accept(2) lists them for Linux.
fn concerns_one_connection(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted
            | ConnectionReset
            | Interrupted
            | WouldBlock
            | TimedOut
            | NetworkDown
            | NetworkUnreachable
            | HostUnreachable
            | PermissionDenied
    ) || error.raw_os_error().is_some_and(|code| {
        [
            rustix::io::Errno::PROTO,
            rustix::io::Errno::NOPROTOOPT,
            rustix::io::Errno::HOSTDOWN,
            rustix::io::Errno::OPNOTSUPP,
        ]
        .iter()
        .any(|e| e.raw_os_error() == code)
    })
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<GuardedIo>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(backoff) = this.backoff.as_mut() {
                ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            if this.slot.is_none() {
                match this.slots.poll_acquire(cx) {
                    Poll::Ready(Some(slot)) => {
                        if this.at_cap {
                            tracing::info!("accepting connections again");
                            this.at_cap = false;
                        }
                        this.slot = Some(slot);
                    }
                    // The semaphore is never closed.
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => {
                        if !this.at_cap {
                            if let Some(metrics) = &this.connections.metrics {
                                metrics.connection_cap_reached();
                            }
                            tracing::warn!(
                                cap = this.cap,
                                "connection cap reached: new connections wait until one closes"
                            );
                            this.at_cap = true;
                        }
                        return Poll::Pending;
                    }
                }
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, remote)) => {
                    if this.failures > 0 {
                        tracing::info!(failures = this.failures, "accepting connections again");
                        this.failures = 0;
                        this.next_backoff = FIRST_BACKOFF;
                    }
                    // Small answers must not wait for the client's delayed ACK (about 40 ms a
                    // request, measured). A socket that refuses the option still works.
                    let _ = stream.set_nodelay(true);
                    let Some(slot) = this.slot.take() else {
                        continue;
                    };
                    if let Some(io) = this.connections.admit(stream, remote, slot) {
                        return Poll::Ready(Some(Ok(io)));
                    }
                }
                Err(error) if concerns_one_connection(&error) => {
                    tracing::debug!(%error, "accepting one connection failed");
                }
                Err(error) => this.accept_failed(&error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_about_one_connection_are_retried_at_once() {
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
        ] {
            assert!(concerns_one_connection(&io::Error::from(kind)));
        }
        let proto = io::Error::from_raw_os_error(rustix::io::Errno::PROTO.raw_os_error());
        assert!(concerns_one_connection(&proto));
        for errno in [
            rustix::io::Errno::MFILE,
            rustix::io::Errno::NFILE,
            rustix::io::Errno::NOBUFS,
            rustix::io::Errno::NOMEM,
        ] {
            let error = io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(!concerns_one_connection(&error), "{error}");
        }
    }
}
