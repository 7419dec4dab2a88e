//! The downloader: one download, start to finish (`run`, driven by
//! [`PeerNode::download`](crate::peer::PeerNode::download)), as a member of a live swarm.
//!
//! 1. Ask the tracker who holds the file; check its answer (`version`: content ids parsed, peer
//!    ids and addresses validated, at most 10,000 holders taken) and pick a version (the one asked
//!    for, else the one with most complete holders).
//! 2. Hunt for the manifest: up to 16 known holders asked at once, 1.5 s deadline each; the first
//!    that matches the content id wins (`contact`). Liars are banned, the silent backed off.
//! 3. Open the partial file under `.p2pshare/partial/` (never in `files/`) and reserve its space,
//!    so a full disk fails the download before anything is fetched; on a resumed download,
//!    re-verify the pieces recorded as done and keep the good ones (`partial`). A download that
//!    stops short (cancelled, holders gone, disk full) keeps its verified pieces, gives back the
//!    space of the others, and says so ([`DiskFull`] for a full disk). A small file (one piece)
//!    has its partial file prepared during step 2, unnamed until it is kept or moved into
//!    `files/` (`partial`: the file system's work overlaps the holder's answer). A download into
//!    `files/` serves its verified pieces from now on (a *partial holder*, announced to the
//!    tracker in the background).
//! 4. The transfer (`transfer`): sessions with at most `max_holders` holders at once, chosen at
//!    random among those known (`known`); each asks the holder which pieces it has, then its
//!    workers take units it has from the rarest-first `picker`, stream them with `GetBlocks`,
//!    verify each piece off the receive path and write it at its offset (`worker`). The set of
//!    holders grows from tracker refreshes and peer exchange; failed holders are retried after a
//!    backoff, liars never. It ends the moment the last piece is verified.
//! 5. fsync, move into `files/` without replacing different content, announce it complete.
//!
//! A download runs under a cancellation token (a child of its node's): cancelled, it stops at its
//! next await, saves the record of verified pieces, keeps a resumable partial file and returns
//! [`DownloadError::Cancelled`]. Its log lines are in a `download` span (file, content id prefix),
//! each holder's in a `holder` span within it.
//!
//! Channels to holders come from the node's pool (`grpc::pool`): downloads from one holder,
//! one after another or at once, share one connection to it.

mod blocks_call;
mod contact;
pub(crate) mod known;
mod partial;
pub(crate) mod picker;
mod request;
mod transfer;
pub(crate) mod version;
mod worker;
mod writer;

pub use crate::progress::Progress;
pub(crate) use partial::ActiveDownloads;
pub use request::{
    Destination, DiskFull, DownloadError, DownloadReport, DownloadRequest, HolderReport, Kept,
};
pub use transfer::DEFAULT_MAX_HOLDERS;

use crate::grpc::{ChannelPool, ClientSecurity};
use crate::metrics::{DownloadOutcome, PeerMetrics};
use crate::names::validate_file_name;
use crate::peer::book::SwarmBook;
use crate::peer::store::{GrowingFile, SharedFile, Store, StoreError};
use crate::peer::tracker_link::TrackerLink;
use contact::Identity;
use known::KnownHolders;
use partial::{kept_bytes, Early, OpenError, Partial};
use request::is_disk_full;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::Instrument;
use transfer::{Setup, Transfer};

/// Concurrent `GetBlocks` streams per holder: two keep a holder busy while the other stream's
/// request is on its way.
pub(crate) const STREAMS_PER_HOLDER: usize = 2;
/// A holder that sends nothing for this long is given up on (its units go to others).
pub(crate) const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the record of verified pieces is saved during a download.
const SAVE_PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What a download needs from its peer node.
pub(crate) struct Context<'a> {
    /// This peer's id (it is never one of the holders asked).
    pub(crate) peer_id: &'a str,
    /// Who holds what.
    pub(crate) tracker: &'a Arc<TrackerLink>,
    /// Where partial files live and finished files go.
    pub(crate) store: &'a Arc<Store>,
    /// How to call holders (swarm key, TLS).
    pub(crate) security: &'a ClientSecurity,
    /// The node's channels to holders, shared by its downloads.
    pub(crate) pool: &'a ChannelPool,
    /// A holder silent this long is given up on.
    pub(crate) stall_timeout: Duration,
    /// Resumable partial files in use by this process's downloads.
    pub(crate) active: &'a ActiveDownloads,
    /// What this peer heard about the swarm (holders for peer exchange, uploads to us).
    pub(crate) book: &'a Arc<SwarmBook>,
    /// Holders connected at once.
    pub(crate) max_holders: usize,
    /// Where bytes received, pieces rejected and outcomes are counted, if anywhere.
    pub(crate) metrics: Option<Arc<PeerMetrics>>,
}

/// Downloads `request` from the other holders in the swarm, counting into `progress`, until done
/// or `cancel` fires.
/// How long a finished download waits for the tracker to acknowledge its announcement before
/// reporting anyway (the announcement continues in the background).
const ANNOUNCE_WAIT: Duration = Duration::from_millis(50);

pub(crate) async fn run(
    ctx: &Context<'_>,
    request: &DownloadRequest,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<DownloadReport, DownloadError> {
    let span = tracing::info_span!("download", file = %request.name, id = tracing::field::Empty);
    let result = download(ctx, request, progress, &cancel)
        .instrument(span)
        .await;
    if let Some(metrics) = &ctx.metrics {
        metrics.download_ended(match &result {
            Ok(_) => DownloadOutcome::Completed,
            Err(DownloadError::Cancelled) => DownloadOutcome::Cancelled,
            Err(_) => DownloadOutcome::Failed,
        });
    }
    result
}

async fn download(
    ctx: &Context<'_>,
    request: &DownloadRequest,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    validate_file_name(&request.name)?;

    // Which version, and who has it.
    let who_has = ctx
        .tracker
        .who_has(&request.name, &request.content_id_prefix);
    let versions = match cancel.run_until_cancelled(who_has).await {
        None => return Err(DownloadError::Cancelled),
        Some(Ok(v)) => v,
        Some(Err(e)) if e.code() == Some(Code::NotFound) => {
            return Err(DownloadError::NotFound(request.name.clone()))
        }
        Some(Err(e)) => return Err(e.into()),
    };
    let (versions, _) = version::parse_versions(&request.name, versions);
    let (version, note) = version::pick_version(&versions, request)?;
    let content_id = version.content_id;
    tracing::Span::current().record("id", tracing::field::display(content_id.short()));
    if request.destination == Destination::Files {
        if let Some(mine) = ctx.store.get(&request.name) {
            if mine.content_id() == content_id {
                return Ok(already_had(&mine, started, note));
            }
        }
    }
    if version.holders.iter().all(|h| h.peer_id == ctx.peer_id) {
        return Err(DownloadError::NoOtherHolder(request.name.clone()));
    }
    // Who we are to holders: our id, and where our own Peer service listens (we serve what we
    // have verified while downloading).
    let me = Identity::new(
        ctx.peer_id,
        ctx.tracker
            .session()
            .map(|s| s.advertised_address)
            .as_deref(),
    );
    let mut known = KnownHolders::default();
    for h in &version.holders {
        if h.peer_id != ctx.peer_id {
            known.learn(&h.peer_id, &h.address, h.partial);
        }
    }
    for h in ctx
        .book
        .holders(&content_id, usize::MAX, ctx.peer_id, Instant::now())
    {
        known.learn(&h.peer_id, &h.address, h.partial);
    }

    // Where it goes. A small file's partial file is prepared meanwhile (the tracker's size is
    // the manifest's, checked by `contact`): the file system's part overlaps the holders' answer.
    let claim = match request.destination {
        Destination::Files => ctx.active.claim(content_id),
        Destination::Scratch | Destination::ScratchNoSync => None,
    };
    let partial_dir = ctx.store.partial_dir().to_path_buf();
    let early = (claim.is_some() && version.size <= u64::from(crate::chunking::MIN_PIECE_SIZE))
        .then(|| {
            let dir = partial_dir.clone();
            let size = version.size;
            tokio::task::spawn_blocking(move || Early::prepare(&dir, content_id, size))
        });

    // What the file is: the first valid manifest of the holders asked in parallel.
    let (manifest, first) = contact::find_manifest(
        &request.name,
        content_id,
        version.size,
        &mut known,
        contact::Dialer {
            pool: ctx.pool,
            security: ctx.security,
        },
        &me,
        cancel,
    )
    .await?;
    let manifest = Arc::new(manifest);
    let geometry = manifest.geometry();
    progress.total.store(geometry.size(), Ordering::Relaxed);

    // What we already have of it. Its space is reserved now: a disk too small fails the download
    // here, before anything is fetched.
    let early = match early {
        Some(task) => task.await.map_err(std::io::Error::other)?,
        None => None,
    };
    let resumable = claim.is_some();
    let opened = if early.as_ref().is_some_and(Early::is_fresh) {
        // Nothing left to do on a blocking thread.
        Partial::open_prepared(&partial_dir, &manifest, resumable, cancel, early)
    } else {
        let dir = partial_dir.clone();
        let manifest = manifest.clone();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            Partial::open_prepared(&dir, &manifest, resumable, &cancel, early)
        })
        .await
        .map_err(std::io::Error::other)?
    };
    let (partial, done) = match opened {
        Ok(Some(opened)) => opened,
        Ok(None) => return Err(DownloadError::Cancelled),
        Err(OpenError::NoSpace {
            source,
            needed,
            free,
            kept,
        }) => {
            return Err(DiskFull {
                name: request.name.clone(),
                dir: partial_dir,
                needed: Some(needed),
                free,
                kept,
                source,
            }
            .into())
        }
        Err(OpenError::Io(e)) => return Err(e.into()),
    };
    let resumed: u64 = (0..geometry.piece_count())
        .filter(|&p| done[p as usize])
        .map(|p| {
            let r = geometry.piece_bytes(p);
            r.end - r.start
        })
        .sum();
    progress.done.store(resumed, Ordering::Relaxed);
    if resumed > 0 {
        tracing::debug!(resumed, "resuming from verified pieces");
    }

    // A download into files/ serves its verified pieces from the start (a partial holder), and
    // says so to the tracker, unless another file of that name is shared here (the tracker keys
    // a peer's files by name).
    // (A file of one piece has nothing to serve before it is complete.)
    let growing = (partial.is_resumable()
        && geometry.piece_count() > 1
        && ctx.store.get(&request.name).is_none())
    .then(|| {
        Arc::new(GrowingFile::new(
            request.name.clone(),
            manifest.clone(),
            partial.path.clone(),
            crate::chunking::Bitfield::from_flags(&done),
        ))
    });
    let mut sharing = growing
        .as_ref()
        .map(|growing| Sharing::start(ctx, growing.clone()));

    // The transfer.
    let transfer = Arc::new(Transfer::new(
        manifest.clone(),
        done,
        partial.file.try_clone()?,
        known,
        progress.clone(),
        Setup {
            me,
            my_id: ctx.peer_id.to_string(),
            security: ctx.security.clone(),
            pool: ctx.pool.clone(),
            book: ctx.book.clone(),
            max_holders: ctx.max_holders.max(1),
            stall_timeout: ctx.stall_timeout,
            growing: growing.clone(),
            durable: request.destination.is_durable(),
            // Where the writer opens it again for direct I/O.
            path: partial.open_path(),
            metrics: ctx.metrics.clone(),
        },
        cancel,
    )?);
    let outcome = transfer.run(ctx, &request.name, &partial, first).await;
    let missing = transfer.missing();
    let holder_reports = transfer.holder_reports();
    let fetched = transfer.fetched();
    let verified = transfer.snapshot();
    // A background sync that failed fails the download, even with every piece written.
    let outcome = match (outcome, transfer.writer().writeback_error()) {
        (Ok(()), Some(e)) => Err(e),
        (outcome, _) => outcome,
    };
    drop(transfer);
    // Stopped short: the verified pieces stay for a resume, the space of the rest goes back.
    if let Err(e) = outcome {
        let (kept, free) = keep_verified(partial, verified).await?;
        if is_disk_full(&e) {
            return Err(DiskFull {
                name: request.name.clone(),
                dir: partial_dir,
                needed: Some(geometry.size() - kept_bytes(&kept)),
                free,
                kept,
                source: e,
            }
            .into());
        }
        return Err(e.into());
    }
    // Cancelled, even with every piece in: the fsync and move could outlast a prompt exit, and
    // the next `get` finds every piece verified and only does those.
    if cancel.is_cancelled() {
        keep_verified(partial, verified).await?;
        tracing::info!(
            fetched,
            missing,
            "cancelled; verified pieces kept for a resume"
        );
        return Err(DownloadError::Cancelled);
    }
    if missing > 0 {
        keep_verified(partial, verified).await?;
        let details = holder_reports
            .iter()
            .map(|h| match &h.dropped {
                Some(why) => format!("{}: {why}", h.peer_id),
                None => format!("{}: busy", h.peer_id),
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(DownloadError::Incomplete {
            name: request.name.clone(),
            missing,
            total: geometry.piece_count(),
            details,
        });
    }
    let mut report = DownloadReport {
        name: request.name.clone(),
        content_id,
        size: geometry.size(),
        holders: holder_reports,
        elapsed: Duration::ZERO,
        fetched,
        resumed,
        note,
        already_had: false,
        path: None,
        sync: None,
    };

    // Into place.
    match request.destination {
        Destination::ScratchNoSync => report.path = Some(partial.path.clone()),
        Destination::Scratch => {
            let file = partial.file.try_clone()?;
            let synced = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                file.sync_data().map(|()| started.elapsed())
            });
            report.sync = Some(synced.await.map_err(std::io::Error::other)??);
            report.path = Some(partial.path.clone());
        }
        Destination::Files => {
            let (file, sync) =
                adopt(ctx.store.clone(), partial, request.name.clone(), manifest).await?;
            report.sync = Some(sync);
            report.path = Some(file.path.clone());
            // Served from files/ now; the announcement below replaces the partial one.
            if let Some(sharing) = sharing.take() {
                sharing.completed();
            }
            announce(ctx, &file, cancel).await;
        }
    }
    drop(claim);
    report.elapsed = started.elapsed();
    tracing::debug!(fetched, elapsed = ?report.elapsed, "done");
    Ok(report)
}

/// Announces a finished download to the tracker. The download waits for the answer at most
/// [`ANNOUNCE_WAIT`]: a tracker that is slow or cut off must not hold a file that is already in
/// place (the announcement goes on in the background, bounded by the call's own deadline, and a
/// failed one is made good by the next registration).
async fn announce(ctx: &Context<'_>, file: &SharedFile, cancel: &CancellationToken) {
    let tracker = ctx.tracker.clone();
    let entry = super::entry(file);
    let name = file.name.clone();
    let cancel = cancel.clone();
    let task = tokio::spawn(
        async move {
            match cancel.run_until_cancelled(tracker.announce(entry)).await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, file = %name, "downloaded but not announced yet; will be on the next registration");
                }
                None => tracing::debug!(file = %name, "cancelled before the announcement"),
            }
        }
        .in_current_span(),
    );
    if tokio::time::timeout(ANNOUNCE_WAIT, task).await.is_err() {
        tracing::debug!(file = %file.name, "the tracker has not answered the announcement yet; going on without it");
    }
}

/// A download serving its verified pieces (a partial holder): registered in the store and
/// announced to the tracker (in the background, so a slow or absent tracker costs the download
/// nothing) for as long as it lasts. Dropped without [`Sharing::completed`] (failure,
/// cancellation), it stops serving and withdraws the announcement.
struct Sharing {
    store: Arc<Store>,
    tracker: Arc<TrackerLink>,
    growing: Arc<GrowingFile>,
    done: bool,
}

impl Sharing {
    fn start(ctx: &Context<'_>, growing: Arc<GrowingFile>) -> Self {
        ctx.store.growing().insert(growing.clone());
        let tracker = ctx.tracker.clone();
        let entry = super::partial_entry(&growing);
        tokio::spawn(
            async move {
                if let Err(e) = tracker.announce(entry).await {
                    tracing::debug!("partial announcement deferred to the next registration: {e}");
                }
            }
            .in_current_span(),
        );
        Sharing {
            store: ctx.store.clone(),
            tracker: ctx.tracker.clone(),
            growing,
            done: false,
        }
    }

    /// The file is whole and in `files/`: stop serving the partial file, keep the announcement
    /// (the caller announces the whole file).
    fn completed(mut self) {
        self.done = true;
    }
}

impl Drop for Sharing {
    fn drop(&mut self) {
        self.store.growing().remove(&self.growing);
        if self.done {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tracker = self.tracker.clone();
        let name = self.growing.name.clone();
        runtime.spawn(async move {
            if let Err(e) = tracker.withdraw(&name).await {
                tracing::debug!("withdrawing the partial announcement failed: {e}");
            }
        });
    }
}

/// Keeps the verified pieces of a download that stopped short (giving back the space of the
/// others), on a blocking thread; returns what is kept and the space free after.
async fn keep_verified(
    partial: Partial,
    verified: Vec<bool>,
) -> Result<(Kept, Option<u64>), DownloadError> {
    let kept = tokio::task::spawn_blocking(move || {
        let kept = partial.keep_verified(&verified);
        (kept, partial::free_space(&partial.file))
    });
    Ok(kept.await.map_err(std::io::Error::other)?)
}

/// Makes the finished partial file durable and moves it into `files/` (the store refuses to
/// replace different content under the name); the partial file and its record are gone after.
/// Returns the file and how long the final fsync took.
/// A full disk on the way keeps them (every piece verified), so that the next `get` only moves
/// the file in.
async fn adopt(
    store: Arc<Store>,
    partial: Partial,
    name: String,
    manifest: Arc<crate::chunking::Manifest>,
) -> Result<(SharedFile, Duration), DownloadError> {
    tokio::task::spawn_blocking(move || -> Result<(SharedFile, Duration), DownloadError> {
        let disk_full = |source: std::io::Error, dir: std::path::PathBuf| {
            let every = vec![true; manifest.geometry().piece_count() as usize];
            let kept = partial.keep_verified(&every);
            DownloadError::from(DiskFull {
                name: name.clone(),
                dir,
                needed: None,
                free: partial::free_space(&partial.file),
                kept,
                source,
            })
        };
        let syncing = Instant::now();
        let synced = partial.file.sync_all();
        let sync = syncing.elapsed();
        tracing::debug!(?sync, "final fsync");
        if let Err(e) = synced {
            let dir = partial.path.parent().unwrap_or(&partial.path).to_path_buf();
            return Err(if is_disk_full(&e) {
                disk_full(e, dir)
            } else {
                e.into()
            });
        }
        match store.adopt_linked(&name, manifest.clone(), |dest| partial.link_to(dest)) {
            Ok(file) => {
                partial.remove();
                Ok((file, sync))
            }
            Err(StoreError::File { path, source }) if is_disk_full(&source) => {
                let dir = path.parent().unwrap_or(&path).to_path_buf();
                Err(disk_full(source, dir))
            }
            Err(e) => {
                partial.remove();
                Err(e.into())
            }
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The report when `files/` already holds this content under this name.
fn already_had(mine: &SharedFile, started: Instant, note: Option<String>) -> DownloadReport {
    DownloadReport {
        name: mine.name.clone(),
        content_id: mine.content_id(),
        size: mine.size,
        holders: vec![],
        elapsed: started.elapsed(),
        fetched: 0,
        resumed: 0,
        note,
        already_had: true,
        path: Some(mine.path.clone()),
        sync: None,
    }
}

/// A holder's error status in a line: its code and message, the message (the holder's text)
/// escaped and cut to `contact::MAX_QUOTED_CHARS`.
fn describe(status: &tonic::Status) -> String {
    let message = crate::names::at_most(status.message(), contact::MAX_QUOTED_CHARS);
    format!("{:?}: {}", status.code(), crate::names::shown(&message))
}
