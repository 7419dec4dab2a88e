//! The Peer service: file meta-information, manifests and `GetBlocks` streaming from the store.
//!
//! `GetBlocks` reads with `pread` in one blocking task per stream, several blocks per message,
//! into a bounded channel: the channel gives back-pressure (a slow reader stalls the reads, not
//! memory), and the task stops as soon as the client goes away. A semaphore caps concurrent
//! streams; over the cap a client gets RESOURCE_EXHAUSTED and can ask another holder.

use crate::chunking::{ContentId, Geometry, BLOCK_SIZE};
use crate::names::{validate_file_name, NameError};
use crate::pb::peer as pb;
use crate::pb::peer::peer_server::{Peer, PeerServer};
use crate::peer::store::{SharedFile, Store};
use bytes::BytesMut;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Most blocks in one `GetBlocks` message (256 KiB): large enough that per-message costs vanish,
/// small enough to keep the pipeline moving.
pub const MAX_BLOCKS_PER_MESSAGE: u64 = 64;
/// Messages buffered per stream ahead of the network (read-ahead).
const READ_AHEAD_MESSAGES: usize = 4;
/// Default cap on concurrent `GetBlocks` streams served by one peer.
pub const DEFAULT_MAX_STREAMS: usize = 128;

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
}

impl PeerService {
    /// A service serving `store` within `limits`.
    pub fn new(store: Arc<Store>, limits: ServeLimits) -> Self {
        PeerService {
            store,
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            limits,
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> PeerServer<Self> {
        PeerServer::new(self)
            .max_decoding_message_size(64 * 1024)
            .max_encoding_message_size(crate::grpc::MAX_MESSAGE_SIZE)
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
            (name, Some(cid)) => self
                .store
                .get(name)
                .filter(|f| f.content_id() == cid)
                .or_else(|| self.store.by_content(&cid)),
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
        let file = self.resolve(req.file)?;
        let geometry = file.manifest.geometry();
        if req.block_count == 0 {
            return Err(ServeError::InvalidArgument("block_count must be at least 1".into()).into());
        }
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
        let (tx, rx) = mpsc::channel(READ_AHEAD_MESSAGES);
        let job = ReadJob {
            file,
            geometry,
            first_block: req.first_block,
            range,
            rate: self.limits.upload_rate.clone(),
            _permit: permit,
        };
        tokio::task::spawn_blocking(move || job.run(tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One `GetBlocks` stream's reads, on a blocking thread.
struct ReadJob {
    file: SharedFile,
    geometry: Geometry,
    first_block: u64,
    range: std::ops::Range<u64>,
    rate: Option<Arc<RateLimiter>>,
    /// Held for the life of the stream.
    _permit: OwnedSemaphorePermit,
}

impl ReadJob {
    fn run(self, tx: mpsc::Sender<Result<pb::GetBlocksResponse, Status>>) {
        if let Err(status) = self.stream(&tx) {
            let _ = tx.blocking_send(Err(status));
        }
    }

    fn stream(
        &self,
        tx: &mpsc::Sender<Result<pb::GetBlocksResponse, Status>>,
    ) -> Result<(), Status> {
        let file = std::fs::File::open(&self.file.path).map_err(ServeError::Io)?;
        if file.metadata().map_err(ServeError::Io)?.len() != self.geometry.size() {
            return Err(ServeError::ChangedOnDisk(self.file.name.clone()).into());
        }
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
            if tx.blocking_send(Ok(message)).is_err() {
                return Ok(()); // The client went away.
            }
            offset += len as u64;
            block += len as u64 / BLOCK_SIZE as u64;
        }
        Ok(())
    }
}
