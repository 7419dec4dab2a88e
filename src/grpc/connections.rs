//! The connections a server holds: how many it accepts (all together and per IP address), how
//! long it keeps them (idle, or with a response the client does not read), and an accept loop
//! that survives running out of file descriptors.
//!
//! * [`Incoming`] accepts. It takes a slot of the process-wide cap *before* calling `accept`, so
//!   at the cap it simply stops accepting (new connections wait in the kernel's backlog) and costs
//!   nothing; a connection from an address that already has its share is closed at once. An
//!   accept error that concerns one connection (reset, aborted) is skipped; any other (EMFILE,
//!   ENFILE, ENOBUFS, ENOMEM) is retried after a backoff of 100 ms doubling to 1 s, instead of at
//!   once: the pending connection keeps the listener readable, so an immediate retry would spin.
//!   tonic retries those errors at once, so none ever reaches it.
//! * [`GuardedIo`] is one accepted connection: a TCP stream that the server can close from
//!   outside (the next read or write fails, hyper drops the connection and with it every stream's
//!   buffers and tasks).
//! * [`CallTrackerLayer`] sees every call on a connection: which are in flight, and for each
//!   response whether the client is taking it. A response body that has handed hyper a frame and
//!   has not been polled again is waiting for the client's flow-control window.
//! * [`sweep`] closes a connection with no call in flight for the idle timeout, or one with a
//!   response left unread for the stall timeout.
//!
//! **Why a whole connection for one unread response.** With a zero send window hyper (1.x) does
//! not poll the response body, only the window, so a server cannot end that one stream: its body
//! never learns the service gave up, the chunk hyper holds and everything queued in the body stay
//! allocated until the client reads or resets, or the connection goes. (The Peer service's stream
//! idle timeout ends the reader and frees the upload slot, but not that memory.) A client that
//! takes nothing of a response for the stall timeout is broken or hostile; closing its connection
//! is the only way to take the memory back.

use super::ServerLimits;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, PollSemaphore, WaitForCancellationFutureOwned};
use tonic::codegen::{http, Service};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// First wait after an accept error that is not about one connection.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between accept attempts while they keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
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

    fn note_refused(&self, ip: IpAddr) {
        let mut refused = lock(&self.refused);
        refused.0 += 1;
        let now = Instant::now();
        if refused
            .1
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_WARNING_EVERY)
        {
            tracing::warn!(
                address = %ip,
                refused = refused.0,
                cap = self.per_address,
                "connections refused: their address already has as many open as allowed"
            );
            *refused = (0, Some(now));
        }
    }

    fn forget(&self, remote: SocketAddr, ip: IpAddr, connection: &Arc<Connection>) {
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

/// Since when a response has been waiting for its client to take a frame, if it is.
struct ResponseClock {
    base: Instant,
    /// Milliseconds after `base` when the body last handed hyper a frame, plus one; 0 while the
    /// body is being polled (the wait is the service's, not the client's) or has ended.
    handed_at: AtomicU64,
}

impl Default for ResponseClock {
    fn default() -> Self {
        ResponseClock {
            base: Instant::now(),
            handed_at: AtomicU64::new(0),
        }
    }
}

impl ResponseClock {
    fn handed_over(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.handed_at.store(ms + 1, Ordering::Relaxed);
    }

    fn waiting_on_server(&self) {
        self.handed_at.store(0, Ordering::Relaxed);
    }

    fn unread_for(&self, now: Instant) -> Option<Duration> {
        match self.handed_at.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.base + Duration::from_millis(ms - 1))),
        }
    }
}

/// One call in flight, until its response body is dropped.
pub(super) struct CallGuard {
    connection: Arc<Connection>,
    id: u64,
    clock: Arc<ResponseClock>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.connection.end_call(self.id);
    }
}

/// Holds a connection's place in the caps until it is dropped.
struct Slot {
    connections: Arc<Connections>,
    remote: SocketAddr,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

/// An accepted TCP connection that the server can close: once closed, reads and writes fail,
/// and hyper drops the connection.
pub(super) struct GuardedIo {
    stream: TcpStream,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    connection: Arc<Connection>,
    _slot: Slot,
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

/// The accept loop as the stream of connections tonic serves: capped, counted, backing off on
/// errors (see the module documentation). It never yields an error.
pub(super) struct Incoming {
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
    pub(super) fn new(listener: TcpListener, connections: Arc<Connections>, cap: usize) -> Self {
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

/// Server middleware: tells [`Connections`] which calls are in flight on each connection and
/// whether their clients are taking their responses.
#[derive(Clone)]
pub(super) struct CallTrackerLayer {
    connections: Arc<Connections>,
}

impl CallTrackerLayer {
    pub(super) fn new(connections: Arc<Connections>) -> Self {
        CallTrackerLayer { connections }
    }
}

impl<S> tower_layer::Layer<S> for CallTrackerLayer {
    type Service = CallTracker<S>;

    fn layer(&self, inner: S) -> CallTracker<S> {
        CallTracker {
            inner,
            connections: self.connections.clone(),
        }
    }
}

/// The [`CallTrackerLayer`] around one service.
#[derive(Clone)]
pub(super) struct CallTracker<S> {
    inner: S,
    connections: Arc<Connections>,
}

/// The client's address as tonic recorded it, over TCP or TLS.
fn remote_of<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CallTracker<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = remote_of(&request).and_then(|remote| self.connections.start_call(&remote));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, call }))
        })
    }
}

/// A response body that tells its call's clock when it hands hyper a frame (the client must now
/// make room for it) and when it is polled again. Its drop ends the call.
pub(super) struct TrackedBody<B> {
    body: B,
    call: Option<CallGuard>,
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(call) = &this.call {
            match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_data() => call.clock.handed_over(),
                // Waiting on the service, or ended: nothing the client must take.
                _ => call.clock.waiting_on_server(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
