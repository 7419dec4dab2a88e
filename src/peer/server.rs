//! The Peer service: file meta-information, manifests and `GetBlocks` streaming from the store.
//!
//! `GetBlocks` reads with `pread` in one blocking task per stream, several blocks per message,
//! into a bounded channel: the channel gives back-pressure (a slow reader stalls the reads, not
//! memory), and the task stops as soon as the client goes away. A semaphore caps concurrent
//! streams; over the cap a client gets RESOURCE_EXHAUSTED and can ask another holder.
//!
//! # What a hostile client can and cannot do
//!
//! * Names are checked ([`crate::names`]) and looked up in the store's table, never joined to a
//!   path: nothing outside `files/` can be named. A file is opened only if it still resolves to a
//!   regular file inside `files/` (an entry replaced by a symlink pointing out since the last scan
//!   is refused, NOT_FOUND).
//! * Block ranges are checked without overflow: empty is INVALID_ARGUMENT, past the end (or past
//!   `u64::MAX`) OUT_OF_RANGE.
//! * Requests over [`MAX_REQUEST_BYTES`] are refused RESOURCE_EXHAUSTED before they are read.
//! * Streams: at most [`ServeLimits::max_streams`] at once (then RESOURCE_EXHAUSTED), at most
//!   [`crate::grpc::ServerLimits::max_streams_per_connection`] per connection, each holding at most
//!   [`READ_AHEAD_MESSAGES`] messages of read-ahead; a stream whose client reads nothing for the
//!   idle timeout ([`DEFAULT_STREAM_IDLE_TIMEOUT`]) is ended with DEADLINE_EXCEEDED and its slot
//!   freed, so clients that open streams and never read cannot keep others out for long.

use crate::chunking::{ContentId, BLOCK_SIZE};
use crate::names::{validate_file_name, NameError};
use crate::pb::peer as pb;
use crate::pb::peer::peer_server::{Peer, PeerServer};
use crate::peer::store::{SharedFile, Store};
use bytes::BytesMut;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Most blocks in one `GetBlocks` message (256 KiB): large enough that per-message costs vanish,
/// small enough to keep the pipeline moving.
pub const MAX_BLOCKS_PER_MESSAGE: u64 = 64;
/// Messages buffered per stream ahead of the network (read-ahead).
pub const READ_AHEAD_MESSAGES: usize = 4;
/// Default cap on concurrent `GetBlocks` streams served by one peer.
pub const DEFAULT_MAX_STREAMS: usize = 128;
/// A `GetBlocks` stream whose client takes none of the read-ahead for this long is ended (and its
/// slot freed).
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request message the Peer service decodes: requests are a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Errors of the Peer service. Mapped to gRPC codes in [`crate::status`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A malformed name.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// Any other malformed field.
    #[error("{0}")]
    InvalidArgument(String),
    /// This peer does not share that file.
    #[error("this peer does not share {0}")]
    NotShared(String),
    /// Blocks past the end of the file.
    #[error("blocks {first}..{end} are past the end of the file ({count} blocks)")]
    OutOfRange {
        /// First block asked for.
        first: u64,
        /// One past the last block asked for.
        end: u128,
        /// Blocks in the file.
        count: u64,
    },
    /// Too many streams at once.
    #[error("peer busy: {0} concurrent streams already; retry later or ask another holder")]
    Busy(usize),
    /// The client read nothing for the idle timeout.
    #[error("stream ended: the client read nothing for {0:?}")]
    Stalled(Duration),
    /// The file on disk no longer matches what was announced.
    #[error("{0} changed on disk since it was shared")]
    ChangedOnDisk(String),
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Shares an upload budget (bytes per second) among all of a peer's streams.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: f64,
    /// When the budget is next free: each send pushes it forward by its size / rate.
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter at `bytes_per_sec`.
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Reserves `bytes` of budget; returns how long to wait before sending them.
    fn reserve(&self, bytes: usize) -> Duration {
        let now = Instant::now();
        let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        // At most a short burst is saved up while idle.
        let floor = now.checked_sub(Duration::from_millis(20)).unwrap_or(now);
        let start = (*next).max(floor);
        *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
        start.saturating_duration_since(now)
    }
}

/// Limits of the Peer service.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Concurrent `GetBlocks` streams.
    pub max_streams: usize,
    /// Upload budget shared by all streams, if any.
    pub upload_rate: Option<Arc<RateLimiter>>,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_streams: DEFAULT_MAX_STREAMS,
            upload_rate: None,
        }
    }
}

/// The Peer service over a store.
#[derive(Clone)]
pub struct PeerService {
    store: Arc<Store>,
    streams: Arc<Semaphore>,
    limits: ServeLimits,
    idle_timeout: Duration,
}

impl PeerService {
    /// A service serving `store` within `limits`.
    pub fn new(store: Arc<Store>, limits: ServeLimits) -> Self {
        PeerService {
            store,
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            limits,
            idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
        }
    }

    /// Ends `GetBlocks` streams whose client reads nothing for `timeout` (default
    /// [`DEFAULT_STREAM_IDLE_TIMEOUT`]).
    pub fn with_stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The tonic server for this service: requests capped at [`MAX_REQUEST_BYTES`] (larger ones
    /// are answered RESOURCE_EXHAUSTED, see [`crate::grpc::ClearLimits`]).
    pub fn into_server(self) -> crate::grpc::ClearLimits<PeerServer<Self>> {
        crate::grpc::ClearLimits::new(
            PeerServer::new(self)
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(crate::grpc::MAX_MESSAGE_SIZE),
        )
    }

    fn resolve(&self, selector: Option<pb::FileSelector>) -> Result<SharedFile, ServeError> {
        let selector = selector.unwrap_or_default();
        let content_id = if selector.content_id.is_empty() {
            None
        } else {
            Some(
                selector
                    .content_id
                    .parse::<ContentId>()
                    .map_err(|e| ServeError::InvalidArgument(e.to_string()))?,
            )
        };
        if !selector.name.is_empty() {
            validate_file_name(&selector.name)?;
        }
        let file = match (selector.name.as_str(), content_id) {
            ("", None) => {
                return Err(ServeError::InvalidArgument(
                    "file: name or content_id is required".into(),
                ))
            }
            ("", Some(cid)) => self.store.by_content(&cid),
            (name, None) => self.store.get(name),
            // The named file, and only if it still has that content.
            (name, Some(cid)) => self.store.get(name).filter(|f| f.content_id() == cid),
        };
        file.ok_or_else(|| {
            ServeError::NotShared(match content_id {
                Some(cid) if selector.name.is_empty() => format!("content {cid}"),
                Some(cid) => format!("{:?} with content {}", selector.name, cid.short()),
                None => format!("{:?}", selector.name),
            })
        })
    }
}

type BlockStream = Pin<Box<dyn Stream<Item = Result<pb::GetBlocksResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    async fn get_file_info(
        &self,
        request: Request<pb::GetFileInfoRequest>,
    ) -> Result<Response<pb::GetFileInfoResponse>, Status> {
        let file = self.resolve(request.into_inner().file)?;
        let g = file.manifest.geometry();
        Ok(Response::new(pb::GetFileInfoResponse {
            name: file.name.clone(),
            size: g.size(),
            block_size: BLOCK_SIZE,
            block_count: g.block_count(),
            content_id: file.content_id().to_hex(),
            piece_size: g.piece_size(),
            piece_count: g.piece_count(),
        }))
    }

    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        let file = self.resolve(request.into_inner().file)?;
        let m = &file.manifest;
        Ok(Response::new(pb::GetManifestResponse {
            content_id: m.content_id().to_hex(),
            size: m.geometry().size(),
            piece_size: m.geometry().piece_size(),
            piece_hashes: m
                .piece_hashes()
                .iter()
                .map(|h| bytes::Bytes::copy_from_slice(h))
                .collect(),
        }))
    }

    type GetBlocksStream = BlockStream;

    async fn get_blocks(
        &self,
        request: Request<pb::GetBlocksRequest>,
    ) -> Result<Response<Self::GetBlocksStream>, Status> {
        let req = request.into_inner();
        if req.block_count == 0 {
            return Err(
                ServeError::InvalidArgument("block_count must be at least 1".into()).into(),
            );
        }
        let file = self.resolve(req.file)?;
        let geometry = file.manifest.geometry();
        let range = geometry
            .block_bytes(req.first_block, req.block_count)
            .ok_or(ServeError::OutOfRange {
                first: req.first_block,
                end: req.first_block as u128 + req.block_count as u128,
                count: geometry.block_count(),
            })?;
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServeError::Busy(self.limits.max_streams))?;
        let files_dir = self.store.files_dir().to_path_buf();
        let (file, opened) = tokio::task::spawn_blocking(move || {
            let opened = open_inside(&files_dir, &file)?;
            if opened.metadata()?.len() != geometry.size() {
                return Err(ServeError::ChangedOnDisk(file.name.clone()));
            }
            Ok((file, opened))
        })
        .await
        .map_err(|e| Status::internal(format!("opening the file failed: {e}")))??;
        // One slot more than the read-ahead: it stays free for the final status (see `send`).
        let (tx, rx) = mpsc::channel(READ_AHEAD_MESSAGES + 1);
        let clock = Arc::new(IdleClock::default());
        let stalled = CancellationToken::new();
        tokio::spawn(idle_watchdog(
            clock.clone(),
            self.idle_timeout,
            stalled.clone(),
        ));
        let job = ReadJob {
            file,
            opened,
            first_block: req.first_block,
            range,
            rate: self.limits.upload_rate.clone(),
            idle_timeout: self.idle_timeout,
            clock,
            stalled,
            runtime: tokio::runtime::Handle::current(),
            _permit: permit,
        };
        tokio::task::spawn_blocking(move || job.run(tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Opens a shared file for reading, only if it still resolves to a regular file inside
/// `files_dir`: an entry replaced since the last scan by a symlink pointing out of the folder (or
/// by anything but a regular file) is refused, never followed. The file opened is checked to be
/// the one at the resolved path, so a swap between the check and the open is caught too.
fn open_inside(files_dir: &Path, file: &SharedFile) -> Result<std::fs::File, ServeError> {
    let gone =
        || ServeError::NotShared(format!("{:?} (it changed since it was shared)", file.name));
    let dir = std::fs::canonicalize(files_dir)?;
    let real = match std::fs::canonicalize(&file.path) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    if !real.starts_with(&dir) {
        tracing::warn!(file = %file.name, "not served: it now resolves outside the shared folder");
        return Err(gone());
    }
    let opened = std::fs::File::open(&real)?;
    let meta = opened.metadata()?;
    let at_path = std::fs::symlink_metadata(&real)?;
    let same = meta.is_file()
        && at_path.is_file()
        && (meta.dev(), meta.ino()) == (at_path.dev(), at_path.ino());
    if !same {
        return Err(gone());
    }
    Ok(opened)
}

/// Since when a stream's reader has been waiting for its client to take read-ahead, if it is.
/// Shared by the reader (a blocking thread) and the stream's [`idle_watchdog`].
struct IdleClock {
    base: Instant,
    /// Milliseconds after `base` when the wait began, plus one; 0 when not waiting.
    waiting_since: AtomicU64,
}

impl Default for IdleClock {
    fn default() -> Self {
        IdleClock {
            base: Instant::now(),
            waiting_since: AtomicU64::new(0),
        }
    }
}

impl IdleClock {
    fn start_waiting(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.waiting_since.store(ms + 1, Ordering::Relaxed);
    }

    fn stop_waiting(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }

    fn waiting_since(&self) -> Option<Instant> {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.base + Duration::from_millis(ms - 1)),
        }
    }
}

/// Cancels `stalled` once the reader has waited `idle` for its client (the stream then ends
/// between one and two `idle` after the client stopped reading). Returns when `stalled` is
/// cancelled, by itself or by the reader finishing. Timers live here, in an async task, not in the
/// reader's blocking thread, where a runtime shutting down would make them panic.
async fn idle_watchdog(clock: Arc<IdleClock>, idle: Duration, stalled: CancellationToken) {
    loop {
        let wake = clock
            .waiting_since()
            .map_or_else(|| Instant::now() + idle, |since| since + idle);
        tokio::select! {
            _ = stalled.cancelled() => return,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        if clock
            .waiting_since()
            .is_some_and(|since| since.elapsed() >= idle)
        {
            stalled.cancel();
            return;
        }
    }
}

/// One `GetBlocks` stream's reads, on a blocking thread.
struct ReadJob {
    file: SharedFile,
    opened: std::fs::File,
    first_block: u64,
    range: std::ops::Range<u64>,
    rate: Option<Arc<RateLimiter>>,
    idle_timeout: Duration,
    clock: Arc<IdleClock>,
    /// Cancelled by the watchdog when the client stalls; by the job when it ends.
    stalled: CancellationToken,
    runtime: tokio::runtime::Handle,
    /// Held for the life of the stream.
    _permit: OwnedSemaphorePermit,
}

type Sender = mpsc::Sender<Result<pb::GetBlocksResponse, Status>>;

impl ReadJob {
    fn run(self, tx: Sender) {
        let result = self.stream(&tx);
        // Stop the watchdog and free the stream slot *before* the stream ends (when `tx` drops),
        // so a client that saw the end can open another stream at once.
        self.stalled.cancel();
        drop(self);
        if let Err(status) = result {
            // `send` always leaves a slot free, so the final status fits even when the client has
            // stopped reading; if the client is gone, nobody needs it.
            let _ = tx.try_send(Err(status));
        }
    }

    /// Queues one message. Waits for *two* free slots and takes one, so a slot always stays free
    /// for the final status. `Ok(false)`: the client went away. Fails when the client has taken
    /// nothing for the idle timeout.
    fn send(&self, tx: &Sender, message: pb::GetBlocksResponse) -> Result<bool, ServeError> {
        self.clock.start_waiting();
        let reserved = self.runtime.block_on(async {
            tokio::select! {
                biased;
                reserved = tx.reserve_many(2) => Some(reserved),
                _ = self.stalled.cancelled() => None,
            }
        });
        self.clock.stop_waiting();
        match reserved {
            None => {
                tracing::debug!(file = %self.file.name, "stream ended: the client stopped reading");
                Err(ServeError::Stalled(self.idle_timeout))
            }
            Some(Err(_)) => Ok(false),
            Some(Ok(mut permits)) => match permits.next() {
                Some(permit) => {
                    permit.send(Ok(message));
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }

    fn stream(&self, tx: &Sender) -> Result<(), Status> {
        let file = &self.opened;
        let message_bytes = MAX_BLOCKS_PER_MESSAGE * BLOCK_SIZE as u64;
        let mut offset = self.range.start;
        let mut block = self.first_block;
        while offset < self.range.end {
            let len = (self.range.end - offset).min(message_bytes) as usize;
            let mut buf = BytesMut::zeroed(len);
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => return Err(ServeError::ChangedOnDisk(self.file.name.clone()).into()),
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ServeError::Io(e).into()),
                }
            }
            if let Some(rate) = &self.rate {
                std::thread::sleep(rate.reserve(len));
            }
            let message = pb::GetBlocksResponse {
                first_block: block,
                data: buf.freeze(),
            };
            if !self.send(tx, message)? {
                return Ok(()); // The client went away.
            }
            offset += len as u64;
            block += len as u64 / BLOCK_SIZE as u64;
        }
        Ok(())
    }
}
