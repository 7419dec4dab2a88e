//! The connections a server holds: how many it accepts (all together and per IP address), how
//! long it keeps them (idle, or with a response the client does not read), and an accept loop
//! that survives running out of file descriptors.
//!
//! * `accept`: [`Incoming`] accepts. It takes a slot of the process-wide cap *before* calling
//!   `accept`, so at the cap it simply stops accepting (new connections wait in the kernel's
//!   backlog) and costs nothing; a connection from an address that already has its share is
//!   closed at once. An accept error that concerns one connection (reset, aborted) is skipped;
//!   any other (EMFILE, ENFILE, ENOBUFS, ENOMEM) is retried after a backoff of 100 ms doubling to
//!   1 s, instead of at once: the pending connection keeps the listener readable, so an
//!   immediate retry would spin (tonic retries those errors at once, so none ever reaches it).
//! * `guarded`: [`GuardedIo`] is one accepted connection: a TCP stream that the server can close
//!   from outside (the next read or write fails, hyper drops the connection and with it every
//!   stream's buffers and tasks).
//! * `calls`: [`CallTrackerLayer`] sees every call on a connection: which are in flight, and for
//!   each response whether the client is taking it. A response body that has handed hyper a
//!   frame and has not been polled again is waiting for the client's flow-control window.
//! * Here: the table of connections and their calls ([`Connections`]), and [`sweep`], which
//!   closes a connection with no call in flight for the idle timeout, or one with a response left
//!   unread for the stall timeout.
//!
//! **Why a whole connection for one unread response.** With a zero send window hyper (1.x) does
//! not poll the response body, only the window, so a server cannot end that one stream: its body
//! never learns the service gave up, the chunk hyper holds and everything queued in the body stay
//! allocated until the client reads or resets, or the connection goes. (The Peer service's stream
//! idle timeout ends the reader and frees the upload slot, but not that memory.) A client that
//! takes nothing of a response for the stall timeout is broken or hostile; closing its connection
//! is the only way to take the memory back.
//!
//! **Locks.** `Connections::table`, each `Connection::calls` and `Connections::refused` are
//! `std::sync::Mutex`es held for a lookup or an update, never across an `.await`, and never two
//! at once: the sweep copies the table's connections out before it looks at their calls.

mod accept;
mod calls;
mod guarded;

pub(super) use accept::Incoming;
pub(super) use calls::CallTrackerLayer;

use super::ServerLimits;
use crate::metrics::{Closed, Refusal, ServerMetrics};
use calls::{CallGuard, ResponseClock};
use guarded::{GuardedIo, Slot};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

/// At most one warning per address-cap episode this often, however many connections are refused.
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(10);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseReason {
    /// No call in flight for the idle timeout.
    Idle,
    /// A response went unread for the stall timeout.
    Stalled,
}

impl CloseReason {
    fn describe(self) -> &'static str {
        match self {
            CloseReason::Idle => "closed by the server: idle",
            CloseReason::Stalled => "closed by the server: a response went unread",
        }
    }
}

/// The live connections of one server, and its caps on them.
pub(super) struct Connections {
    per_address: usize,
    idle_timeout: Duration,
    stall_timeout: Duration,
    table: Mutex<Table>,
    /// Connections refused for their address's cap since the last warning, and when that was.
    refused: Mutex<(u64, Option<Instant>)>,
    /// Where connections, refusals and closes are counted, if anywhere.
    metrics: Option<Arc<ServerMetrics>>,
}

#[derive(Default)]
struct Table {
    by_remote: HashMap<SocketAddr, Arc<Connection>>,
    per_address: HashMap<IpAddr, usize>,
}

impl Connections {
    pub(super) fn new(limits: &ServerLimits) -> Arc<Self> {
        Arc::new(Connections {
            per_address: limits.max_connections_per_address.max(1),
            idle_timeout: limits.idle_timeout,
            stall_timeout: limits.client_stall_timeout,
            table: Mutex::default(),
            refused: Mutex::default(),
            metrics: limits.metrics.as_ref().map(|m| {
                m.server().set_connection_cap(limits.max_connections);
                m.server().clone()
            }),
        })
    }

    /// Counts a newly accepted connection, or refuses it (`None`, the stream is dropped) when
    /// its address has its share already.
    fn admit(
        self: &Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> Option<GuardedIo> {
        let ip = remote.ip().to_canonical();
        let connection = Arc::new(Connection::new(remote));
        {
            let mut table = lock(&self.table);
            let open = table.per_address.entry(ip).or_default();
            if *open >= self.per_address {
                drop(table);
                self.note_refused(ip);
                return None;
            }
            *open += 1;
            table.by_remote.insert(remote, connection.clone());
        }
        if let Some(metrics) = &self.metrics {
            metrics.connection_opened();
        }
        Some(GuardedIo {
            stream,
            closed: Box::pin(connection.close.clone().cancelled_owned()),
            connection,
            _slot: Slot {
                connections: self.clone(),
                remote,
                ip,
                _permit: permit,
            },
        })
    }

    /// Counts a refused connection; warns at most once per [`REFUSAL_WARNING_EVERY`] (after the
    /// lock is released: the console's lock must stay innermost).
    fn note_refused(&self, ip: IpAddr) {
        if let Some(metrics) = &self.metrics {
            metrics.refused(Refusal::ConnectionsPerAddress);
        }
        let now = Instant::now();
        let due = {
            let mut refused = lock(&self.refused);
            refused.0 += 1;
            let due = refused
                .1
                .is_none_or(|last| now.duration_since(last) >= REFUSAL_WARNING_EVERY);
            let count = refused.0;
            if due {
                *refused = (0, Some(now));
            }
            due.then_some(count)
        };
        if let Some(count) = due {
            tracing::warn!(
                address = %ip,
                refused = count,
                cap = self.per_address,
                "connections refused: their address already has as many open as allowed"
            );
        }
    }

    fn forget(&self, remote: SocketAddr, ip: IpAddr, connection: &Arc<Connection>) {
        if let Some(metrics) = &self.metrics {
            metrics.connection_ended();
        }
        let mut table = lock(&self.table);
        if table
            .by_remote
            .get(&remote)
            .is_some_and(|c| Arc::ptr_eq(c, connection))
        {
            table.by_remote.remove(&remote);
        }
        if let Some(open) = table.per_address.get_mut(&ip) {
            *open -= 1;
            if *open == 0 {
                table.per_address.remove(&ip);
            }
        }
    }

    /// A call starting on the connection from `remote` (if this server accepted it).
    fn start_call(&self, remote: &SocketAddr) -> Option<CallGuard> {
        let connection = lock(&self.table).by_remote.get(remote).cloned()?;
        Some(connection.start_call())
    }

    /// Open connections, and how many of them come from `ip`.
    #[cfg(test)]
    fn counts(&self, ip: IpAddr) -> (usize, usize) {
        let table = lock(&self.table);
        (
            table.by_remote.len(),
            table.per_address.get(&ip).copied().unwrap_or(0),
        )
    }

    /// Closes every connection idle or stalled at `now`.
    fn sweep_once(&self, now: Instant) {
        let all: Vec<Arc<Connection>> = lock(&self.table).by_remote.values().cloned().collect();
        for connection in all {
            if let Some(reason) = connection.verdict(now, self.idle_timeout, self.stall_timeout) {
                if let Some(metrics) = &self.metrics {
                    metrics.closed(match reason {
                        CloseReason::Idle => Closed::Idle,
                        CloseReason::Stalled => Closed::Stalled,
                    });
                }
                connection.close(reason);
            }
        }
    }
}

/// Closes idle and stalled connections of `connections`, checking a few times per timeout,
/// until aborted.
pub(super) async fn sweep(connections: Arc<Connections>) {
    let shortest = connections.idle_timeout.min(connections.stall_timeout);
    let period = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        connections.sweep_once(Instant::now());
    }
}

/// One accepted connection as the server tracks it.
pub(super) struct Connection {
    remote: SocketAddr,
    close: CancellationToken,
    reason: OnceLock<CloseReason>,
    calls: Mutex<Calls>,
}

struct Calls {
    next_id: u64,
    live: HashMap<u64, Arc<ResponseClock>>,
    /// When the last call ended (or the connection was accepted).
    idle_since: Instant,
}

impl Connection {
    fn new(remote: SocketAddr) -> Self {
        Connection {
            remote,
            close: CancellationToken::new(),
            reason: OnceLock::new(),
            calls: Mutex::new(Calls {
                next_id: 0,
                live: HashMap::new(),
                idle_since: Instant::now(),
            }),
        }
    }

    fn start_call(self: Arc<Self>) -> CallGuard {
        let clock = Arc::new(ResponseClock::default());
        let id = {
            let mut calls = lock(&self.calls);
            let id = calls.next_id;
            calls.next_id += 1;
            calls.live.insert(id, clock.clone());
            id
        };
        CallGuard {
            connection: self,
            id,
            clock,
        }
    }

    fn end_call(&self, id: u64) {
        let mut calls = lock(&self.calls);
        calls.live.remove(&id);
        if calls.live.is_empty() {
            calls.idle_since = Instant::now();
        }
    }

    /// Whether the connection should be closed at `now`, and why.
    fn verdict(&self, now: Instant, idle: Duration, stall: Duration) -> Option<CloseReason> {
        if self.close.is_cancelled() {
            return None;
        }
        let calls = lock(&self.calls);
        if calls.live.is_empty() {
            return (now.saturating_duration_since(calls.idle_since) >= idle)
                .then_some(CloseReason::Idle);
        }
        calls
            .live
            .values()
            .any(|clock| clock.unread_for(now).is_some_and(|unread| unread >= stall))
            .then_some(CloseReason::Stalled)
    }

    fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            match reason {
                CloseReason::Idle => {
                    tracing::debug!(remote = %self.remote, "{}", reason.describe())
                }
                CloseReason::Stalled => {
                    tracing::info!(remote = %self.remote, "{}", reason.describe())
                }
            }
        }
        self.close.cancel();
    }

    fn closed_error(&self) -> io::Error {
        let reason = self.reason.get().copied().unwrap_or(CloseReason::Idle);
        io::Error::new(io::ErrorKind::ConnectionAborted, reason.describe())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;

    fn limits(idle: u64, stall: u64) -> ServerLimits {
        ServerLimits {
            idle_timeout: Duration::from_secs(idle),
            client_stall_timeout: Duration::from_secs(stall),
            max_connections_per_address: 2,
            ..ServerLimits::default()
        }
    }

    #[test]
    fn a_connection_is_idle_only_with_no_call_in_flight() {
        let t0 = Instant::now();
        let connection = Arc::new(Connection::new("127.0.0.1:1".parse().unwrap()));
        let (idle, stall) = (Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(connection.verdict(t0, idle, stall), None);
        assert_eq!(
            connection.verdict(t0 + Duration::from_secs(11), idle, stall),
            Some(CloseReason::Idle)
        );
        // A call in flight whose body is being polled: neither idle nor stalled, however long.
        let call = connection.clone().start_call();
        let late = Instant::now() + Duration::from_secs(100);
        assert_eq!(connection.verdict(late, idle, stall), None);
        // Its body handed a frame over and was not polled again: stalled after `stall`.
        call.clock.handed_over();
        let handed = Instant::now();
        assert_eq!(connection.verdict(handed, idle, stall), None);
        assert_eq!(
            connection.verdict(handed + Duration::from_secs(6), idle, stall),
            Some(CloseReason::Stalled)
        );
        // Polled again: no longer stalled. Ended: idle counts from the end.
        call.clock.waiting_on_server();
        assert_eq!(
            connection.verdict(handed + Duration::from_secs(6), idle, stall),
            None
        );
        drop(call);
        let ended = Instant::now();
        assert_eq!(connection.verdict(ended, idle, stall), None);
        assert_eq!(
            connection.verdict(ended + Duration::from_secs(10), idle, stall),
            Some(CloseReason::Idle)
        );
        // Closed once, judged no more.
        connection.close(CloseReason::Idle);
        assert_eq!(
            connection.verdict(ended + Duration::from_secs(10), idle, stall),
            None
        );
        assert_eq!(
            connection.closed_error().kind(),
            io::ErrorKind::ConnectionAborted
        );
    }

    #[tokio::test]
    async fn each_address_gets_its_share_and_a_closed_connection_gives_it_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Connections::new(&limits(60, 30));
        let slots = Arc::new(Semaphore::new(10));
        let mut admitted = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (stream, remote) = listener.accept().await.unwrap();
            let slot = slots.clone().try_acquire_owned().unwrap();
            admitted.push(connections.admit(stream, remote, slot));
        }
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!(admitted[0].is_some() && admitted[1].is_some());
        assert!(admitted[2].is_none(), "a third connection from one address");
        assert_eq!(connections.counts(ip), (2, 2));
        // The refused one gave its process slot back at once.
        assert_eq!(slots.available_permits(), 8);
        admitted.pop();
        admitted.pop();
        assert_eq!(connections.counts(ip), (1, 1));
        assert_eq!(slots.available_permits(), 9);
    }
}
