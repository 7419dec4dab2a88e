//! The Peer service: file meta-information, manifests and `GetBlocks` streaming from the store.
//!
//! `GetBlocks` reads with `pread` in one blocking task per stream, several blocks per message,
//! into a bounded channel (`stream`): the channel gives back-pressure (a slow reader stalls the
//! reads, not memory), and the task stops as soon as the client goes away. A semaphore caps
//! concurrent streams; over the cap a client gets RESOURCE_EXHAUSTED and can ask another holder.
//! An upload rate cap ([`RateLimiter`]) is shared by all streams.
//!
//! Every stream runs under a child of the service's shutdown token ([`PeerService::with_shutdown`]):
//! when the peer shuts down, each stream ends at once with UNAVAILABLE, whatever its client does.
//! Each stream logs in a `serve` span (remote address, file, blocks).
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
//! * Streams: at most [`ServeLimits::max_streams`] at once, at most
//!   [`ServeLimits::max_streams_per_address`] from one IP address (past either:
//!   RESOURCE_EXHAUSTED), at most [`crate::grpc::ServerLimits::max_streams_per_connection`] per
//!   connection, each holding at most [`READ_AHEAD_MESSAGES`] messages of read-ahead. One client
//!   address, however many connections and peer ids it uses, never holds more than its share, so
//!   others are served at once.
//! * A stream whose client reads nothing for the idle timeout ([`DEFAULT_STREAM_IDLE_TIMEOUT`])
//!   is ended with DEADLINE_EXCEEDED and its slot freed; the data already queued for it is freed
//!   when the server closes the connection, after
//!   [`crate::grpc::ServerLimits::client_stall_timeout`] (see [`crate::grpc`]: hyper does not poll
//!   a stream whose window is zero, so nothing less than the connection can be taken back). Until
//!   then the stream still counts against its address's share, so a client that never reads
//!   holds at most that share's buffers.

mod blocks_route;
mod error;
mod limits;
mod stream;

pub use blocks_route::BlocksRoute;

pub use crate::peer::choke::DEFAULT_UPLOAD_SLOTS;
pub(crate) use error::ServeError;
pub use limits::{RateLimiter, ServeLimits};

use crate::chunking::{Bitfield, Manifest};
use crate::chunking::{ContentId, BLOCK_SIZE};
use crate::metrics::Refusal;
use crate::names::validate_file_name;
use crate::pb::peer as pb;
use crate::pb::peer::peer_server::{Peer, PeerServer};
use crate::peer::book::{SwarmBook, MAX_EXCHANGED};
use crate::peer::choke::{Admission, Choker};
use crate::peer::store::{GrowingFile, SharedFile, Store};
use limits::{AddressCounted, AddressStreams};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use stream::{idle_watchdog, IdleClock, ReadJob, UploadSlot};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Most blocks in one `GetBlocks` message (256 KiB): large enough that per-message costs vanish,
/// small enough to keep the pipeline moving.
pub(crate) const MAX_BLOCKS_PER_MESSAGE: u64 = 64;
/// Messages buffered per stream ahead of the network (read-ahead).
pub(crate) const READ_AHEAD_MESSAGES: usize = 4;
/// Default cap on concurrent `GetBlocks` streams served by one peer.
pub const DEFAULT_MAX_STREAMS: usize = 128;
/// Default cap on concurrent `GetBlocks` streams served to one IP address: an eighth of
/// [`DEFAULT_MAX_STREAMS`]. A download takes 2 streams per holder, so this is 8 downloads from
/// one address at once.
pub const DEFAULT_MAX_STREAMS_PER_ADDRESS: usize = 16;
/// A `GetBlocks` stream whose client takes none of the read-ahead for this long is ended (and its
/// slot freed).
pub(crate) const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request message the Peer service decodes: requests are a few hundred bytes.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Metadata a downloader sends with its peer id (a claim: for fairness and peer exchange only).
pub(crate) const PEER_ID_HEADER: &str = "x-p2pshare-peer-id";
/// Metadata a downloader sends with the address of its own Peer service (a claim).
pub(crate) const PEER_ADDRESS_HEADER: &str = "x-p2pshare-peer-address";

/// The Peer service over a store.
#[derive(Clone)]
pub struct PeerService {
    store: Arc<Store>,
    streams: Arc<Semaphore>,
    /// Streams per client address.
    address_streams: Arc<AddressStreams>,
    limits: ServeLimits,
    idle_timeout: Duration,
    /// Every stream runs under a child of it.
    shutdown: CancellationToken,
    /// Who holds what and who uploaded to us (shared with the node's downloads).
    book: Arc<SwarmBook>,
    /// Which downloaders are served now.
    choker: Arc<std::sync::Mutex<Choker>>,
    /// Bytes of blocks sent, all streams together.
    uploaded: Arc<std::sync::atomic::AtomicU64>,
    /// Pieces of served files already checked since they last changed (not hashed again).
    checked: Arc<stream::CheckedFiles>,
    /// Where refused streams are counted, if anywhere.
    metrics: Option<Arc<crate::metrics::ServerMetrics>>,
}

/// A file as served: whole (in `files/`) or growing (a download in progress: verified pieces).
enum Served {
    Whole(SharedFile),
    Growing(Arc<GrowingFile>),
}

impl Served {
    fn name(&self) -> &str {
        match self {
            Served::Whole(f) => &f.name,
            Served::Growing(f) => &f.name,
        }
    }

    fn manifest(&self) -> &Arc<Manifest> {
        match self {
            Served::Whole(f) => &f.manifest,
            Served::Growing(f) => &f.manifest,
        }
    }
}

/// Who is asking, as far as the request says: its claimed peer id and listening address (both
/// checked for shape, never trusted), and the key the choker knows it by.
struct Requester {
    key: String,
    peer_id: Option<String>,
    address: Option<String>,
}

impl Requester {
    fn of<T>(request: &Request<T>) -> Self {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let peer_id =
            header(PEER_ID_HEADER).filter(|id| crate::names::validate_peer_id(id).is_ok());
        let address =
            header(PEER_ADDRESS_HEADER).filter(|a| crate::names::peer_address(a).is_some());
        let ip = request.remote_addr().map_or_else(
            || "unknown".to_string(),
            |a| a.ip().to_canonical().to_string(),
        );
        // One downloader is one key however many streams and downloads it runs; without a
        // claimed id, its IP address.
        let key = match &peer_id {
            Some(id) => id.clone(),
            None => format!("ip:{ip}"),
        };
        Requester {
            key,
            peer_id,
            address,
        }
    }
}

impl PeerService {
    /// A service serving `store` within `limits`.
    pub fn new(store: Arc<Store>, limits: ServeLimits) -> Self {
        PeerService {
            store,
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            address_streams: AddressStreams::new(limits.max_streams_per_address),
            choker: Arc::new(std::sync::Mutex::new(Choker::new(
                limits.upload_slots,
                Instant::now(),
            ))),
            idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            shutdown: CancellationToken::new(),
            book: Arc::default(),
            // With metrics, their served-bytes counter is this one: nothing more per message.
            uploaded: limits
                .peer_metrics()
                .map_or_else(Arc::default, |m| m.served()),
            checked: Arc::default(),
            metrics: (limits.connections.metrics.as_ref()).map(|m| m.server().clone()),
            limits,
        }
    }

    /// The running count of bytes of blocks this service has sent.
    pub(crate) fn uploaded(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.uploaded.clone()
    }

    /// Shares `book` with the node's downloads: peer exchange answers from it, requesters are
    /// recorded in it, and the choker prefers those it says uploaded to us.
    pub(crate) fn with_book(mut self, book: Arc<SwarmBook>) -> Self {
        self.book = book;
        self
    }

    /// Ends every `GetBlocks` stream in flight (UNAVAILABLE, "peer shutting down") once `token`
    /// is cancelled, and refuses new ones the same way. Default: streams run to their end.
    pub(crate) fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Ends `GetBlocks` streams whose client reads nothing for `timeout` (default
    /// [`DEFAULT_STREAM_IDLE_TIMEOUT`]).
    pub fn with_stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The tonic server for this service: requests capped at [`MAX_REQUEST_BYTES`] (larger ones
    /// are answered RESOURCE_EXHAUSTED, see [`crate::grpc::ClearLimits`]), and `GetBlocks`
    /// sent without a copy of its data ([`BlocksRoute`]).
    pub fn into_server(self) -> BlocksRoute<crate::grpc::ClearLimits<PeerServer<Self>>> {
        let service = Arc::new(self);
        BlocksRoute::new(
            crate::grpc::ClearLimits::new(
                PeerServer::from_arc(service.clone())
                    .max_decoding_message_size(MAX_REQUEST_BYTES)
                    .max_encoding_message_size(crate::grpc::MAX_MESSAGE_SIZE),
            ),
            service,
        )
    }

    /// Counts a stream a limit refused.
    fn refused(&self, refusal: Refusal) {
        if let Some(metrics) = &self.metrics {
            metrics.refused(refusal);
        }
    }

    /// The file a selector names: a shared file, or (by content id only) a download in progress.
    fn resolve(&self, selector: Option<pb::FileSelector>) -> Result<Served, ServeError> {
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
        let growing = |cid: &ContentId| self.store.growing().get(cid).map(Served::Growing);
        let file = match (selector.name.as_str(), content_id) {
            ("", None) => {
                return Err(ServeError::InvalidArgument(
                    "file: name or content_id is required".into(),
                ))
            }
            ("", Some(cid)) => self
                .store
                .by_content(&cid)
                .map(Served::Whole)
                .or_else(|| growing(&cid)),
            (name, None) => self
                .store
                .get(name)
                .map(Served::Whole)
                .or_else(|| self.store.growing().named(name).map(Served::Growing)),
            // The named file, and only if it still has that content.
            (name, Some(cid)) => self
                .store
                .get(name)
                .filter(|f| f.content_id() == cid)
                .map(Served::Whole)
                .or_else(|| growing(&cid).filter(|g| g.name() == name)),
        };
        file.ok_or_else(|| {
            ServeError::NotShared(match content_id {
                Some(cid) if selector.name.is_empty() => format!("content {cid}"),
                Some(cid) => format!("{:?} with content {}", selector.name, cid.short()),
                None => format!("{:?}", selector.name),
            })
        })
    }

    /// Remembers a downloader that said where it listens as a (partial) holder of `content_id`,
    /// for peer exchange.
    fn remember(&self, requester: &Requester, content_id: ContentId) {
        if let (Some(id), Some(address)) = (&requester.peer_id, &requester.address) {
            self.book
                .learn(content_id, id, address, true, Instant::now());
        }
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
        let g = file.manifest().geometry();
        Ok(Response::new(pb::GetFileInfoResponse {
            name: file.name().to_string(),
            size: g.size(),
            block_size: BLOCK_SIZE,
            block_count: g.block_count(),
            content_id: file.manifest().content_id().to_hex(),
            piece_size: g.piece_size(),
            piece_count: g.piece_count(),
        }))
    }

    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::GetManifestResponse>, Status> {
        let file = self.resolve(request.into_inner().file)?;
        let m = file.manifest();
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
        let remote_addr = request.remote_addr();
        if self.shutdown.is_cancelled() {
            return Err(ServeError::ShuttingDown.into());
        }
        // First: refusing a client over its share must cost next to nothing (a flood of such
        // requests is the attack this cap is for), and the choker must not count or queue it.
        let address_slot = match remote_addr {
            Some(addr) => Some(
                self.address_streams
                    .try_take(addr.ip().to_canonical())
                    .ok_or_else(|| {
                        self.refused(Refusal::StreamsPerAddress);
                        ServeError::AddressBusy(self.address_streams.cap())
                    })?,
            ),
            // Not over TCP (an in-process transport): no address to share by.
            None => None,
        };
        let remote = remote_addr.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let requester = Requester::of(&request);
        let req = request.into_inner();
        if req.block_count == 0 {
            return Err(
                ServeError::InvalidArgument("block_count must be at least 1".into()).into(),
            );
        }
        let file = self.resolve(req.file)?;
        let manifest = file.manifest().clone();
        let geometry = manifest.geometry();
        let range = geometry
            .block_bytes(req.first_block, req.block_count)
            .ok_or(ServeError::OutOfRange {
                first: req.first_block,
                end: req.first_block as u128 + req.block_count as u128,
                count: geometry.block_count(),
            })?;
        self.remember(&requester, manifest.content_id());
        if let Served::Growing(growing) = &file {
            // Only verified pieces: every piece the range touches must be done.
            let pieces = geometry.pieces_of_bytes(range.clone());
            if !growing.has_all(pieces) {
                return Err(ServeError::NotYet {
                    first: req.first_block,
                    end: req.first_block + req.block_count,
                }
                .into());
            }
        }
        let admission = {
            let book = self.book.clone();
            let received = move |key: &str| book.received(key);
            self.choker.lock().unwrap_or_else(|e| e.into_inner()).admit(
                &requester.key,
                Instant::now(),
                &received,
            )
        };
        let slot = match admission {
            Admission::Unchoked => UploadSlot {
                choker: self.choker.clone(),
                key: requester.key.clone(),
                sent: Default::default(),
                total: self.uploaded.clone(),
            },
            Admission::Choked(retry) => {
                self.refused(Refusal::UploadSlots);
                return Err(ServeError::Choked {
                    slots: self.limits.upload_slots,
                    retry,
                }
                .into());
            }
        };
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            self.refused(Refusal::Streams);
            ServeError::Busy(self.limits.max_streams)
        })?;
        let files_dir = self.store.files_dir().to_path_buf();
        let name = file.name().to_string();
        let (opened, stamp) = tokio::task::spawn_blocking(move || {
            let opened = match &file {
                Served::Whole(shared) => open_inside(&files_dir, shared)?,
                Served::Growing(growing) => std::fs::File::open(&growing.path).map_err(|_| {
                    ServeError::NotShared(format!("{:?} (its download ended)", growing.name))
                })?,
            };
            let meta = opened.metadata()?;
            if meta.len() != geometry.size() {
                return Err(ServeError::ChangedOnDisk(file.name().to_string()));
            }
            Ok((opened, stream::FileStamp::of(&meta)))
        })
        .await
        .map_err(|e| ServeError::Io(std::io::Error::other(e)))??;
        let span = tracing::info_span!(
            "serve",
            remote = %remote,
            file = %name,
            blocks = %format_args!("{}..{}", req.first_block, req.first_block as u128 + req.block_count as u128),
        );
        // One slot more than the read-ahead: it stays free for the final status (see `send`).
        let (tx, rx) = mpsc::channel(READ_AHEAD_MESSAGES + 1);
        let clock = Arc::new(IdleClock::default());
        let stop = self.shutdown.child_token();
        tokio::spawn(
            idle_watchdog(clock.clone(), self.idle_timeout, stop.clone()).instrument(span.clone()),
        );
        let job = ReadJob {
            name,
            opened,
            first_block: req.first_block,
            range,
            rate: self.limits.upload_rate.clone(),
            idle_timeout: self.idle_timeout,
            clock,
            shutdown: self.shutdown.clone(),
            stop,
            runtime: tokio::runtime::Handle::current(),
            _permit: permit,
            slot: Some(slot),
            check: stream::PieceCheck::new(
                manifest.clone(),
                self.store.clone(),
                self.checked
                    .of(manifest.content_id(), stamp, geometry.piece_count()),
            ),
        };
        // Spans do not follow a closure onto a blocking thread by themselves.
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            tracing::debug!("streaming");
            job.run(tx);
        });
        Ok(Response::new(Box::pin(AddressCounted::new(
            ReceiverStream::new(rx),
            address_slot,
        ))))
    }

    async fn get_pieces(
        &self,
        request: Request<pb::GetPiecesRequest>,
    ) -> Result<Response<pb::GetPiecesResponse>, Status> {
        let requester = Requester::of(&request);
        let file = self.resolve(request.into_inner().file)?;
        let manifest = file.manifest();
        self.remember(&requester, manifest.content_id());
        let pieces = manifest.geometry().piece_count();
        let have = match &file {
            Served::Whole(_) => Bitfield::full(pieces),
            Served::Growing(growing) => growing.have(),
        };
        Ok(Response::new(pb::GetPiecesResponse {
            content_id: manifest.content_id().to_hex(),
            piece_count: pieces,
            complete: have.is_full(),
            bitfield: bytes::Bytes::copy_from_slice(have.as_bytes()),
        }))
    }

    async fn get_holders(
        &self,
        request: Request<pb::GetHoldersRequest>,
    ) -> Result<Response<pb::GetHoldersResponse>, Status> {
        let requester = Requester::of(&request);
        let content_id: ContentId = request.into_inner().content_id.parse().map_err(
            |e: crate::chunking::ChunkingError| ServeError::InvalidArgument(e.to_string()),
        )?;
        let except = requester.peer_id.as_deref().unwrap_or("");
        let holders = self
            .book
            .holders(&content_id, MAX_EXCHANGED, except, Instant::now())
            .into_iter()
            .map(|h| pb::KnownHolder {
                peer_id: h.peer_id,
                address: h.address,
                partial: h.partial,
            })
            .collect();
        Ok(Response::new(pb::GetHoldersResponse { holders }))
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
