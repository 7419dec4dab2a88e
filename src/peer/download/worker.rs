//! One holder within a download: its session (bitfield, workers, piece updates) and the fetch of
//! a unit (stream, verify each piece off the receive path, write it at its offset).
//!
//! A session starts by asking the holder which pieces it has, then runs
//! [`STREAMS_PER_HOLDER`](super::STREAMS_PER_HOLDER) workers that take units the holder has from
//! the [`Picker`](super::picker::Picker); a partial holder is polled for new pieces. The session
//! ends when the file is done, when the holder has had nothing we need for a while and others
//! wait to be contacted, or on the first failure: corrupt data (the holder is never contacted
//! again), a failure or stall (retried after a backoff), or a refusal (choked or busy: retried
//! soon). Whatever its units had not delivered goes back to the picker.

use super::blocks_call;
use super::contact::Link;
use super::known::Outcome;
use super::picker::{Assignment, HolderKey, Next};
use super::transfer::Transfer;
use super::writer::{PieceFailure, Written};
use super::{describe, STREAMS_PER_HOLDER};
use crate::chunking::{Bitfield, PieceIndex, BLOCK_SIZE};
use crate::grpc::Rope;
use crate::pb::peer as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::Instrument;

/// How long a worker with nothing to do waits before asking the picker again, unless a change
/// (a unit released, a piece done, a holder's new pieces) wakes it sooner.
const IDLE_RECHECK: Duration = Duration::from_millis(200);
/// How often a partial holder is asked for the pieces it gained.
pub(crate) const PIECES_POLL: Duration = Duration::from_millis(500);
/// A holder that has had nothing we need for this long leaves its slot to another, if another
/// is waiting to be contacted.
const IDLE_HOLDER_LIMIT: Duration = Duration::from_secs(3);

/// How a worker (or a fetch) ended.
enum End {
    /// The file is done, or the session was told to stop.
    Stopped,
    /// The holder had nothing we need for a while and others are waiting.
    Idle,
    /// The holder refused for now (choked, busy).
    Busy(String),
    /// The holder failed (connection, stall, protocol, pieces it said it had but has not).
    Failed(String),
    /// The holder sent data that failed verification.
    Corrupt(String),
    /// Writing locally failed: the download stops.
    Local(std::io::Error),
}

impl End {
    /// How bad it is: the worst end of a session's workers decides its outcome.
    fn severity(&self) -> u8 {
        match self {
            End::Stopped => 0,
            End::Idle => 1,
            End::Busy(_) => 2,
            End::Failed(_) => 3,
            End::Corrupt(_) => 4,
            End::Local(_) => 5,
        }
    }
}

/// A piece queued for the download's writer.
struct PendingPiece {
    piece: PieceIndex,
    len: u64,
    written: Written,
}

/// Runs a session with the holder `link` until it ends; returns how (for its standing) and why
/// (for the report), or a local write error that stops the download.
pub(super) async fn session(
    transfer: Arc<Transfer>,
    key: HolderKey,
    link: Link,
) -> Result<(Outcome, Option<String>), std::io::Error> {
    let stop = transfer.sessions_cancel().child_token();
    let has = tokio::select! {
        _ = stop.cancelled() => return Ok((Outcome::Fine, None)),
        has = link.pieces(transfer.manifest(), transfer.me()) => has,
    };
    let has = match has {
        Ok(has) => has,
        Err((outcome, why)) => return Ok((outcome, Some(why))),
    };
    let partial = !has.is_full();
    transfer.holder_joined(key, &link.peer_id, has);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..STREAMS_PER_HOLDER {
        let (transfer, link, stop) = (transfer.clone(), link.clone(), stop.clone());
        tasks.spawn(
            async move { (true, run_worker(&transfer, key, &link, &stop).await) }
                .instrument(tracing::Span::current()),
        );
    }
    if partial {
        let (transfer, link, stop) = (transfer.clone(), link.clone(), stop.clone());
        tasks.spawn(
            async move { (false, poll_pieces(&transfer, key, &link, &stop).await) }
                .instrument(tracing::Span::current()),
        );
    }
    // The first failure stops the session's other tasks; its worst end decides the outcome.
    // When the last worker is gone (done, or idle with others waiting), the poller stops too:
    // the slot is free for another holder.
    let mut worst = End::Stopped;
    let mut workers = STREAMS_PER_HOLDER;
    while let Some(joined) = tasks.join_next().await {
        let (worker, end) = joined.unwrap_or_else(|e| (true, End::Local(std::io::Error::other(e))));
        if worker {
            workers -= 1;
        }
        if workers == 0 || end.severity() >= End::Busy(String::new()).severity() {
            stop.cancel();
        }
        if end.severity() > worst.severity() {
            worst = end;
        }
    }
    transfer.holder_left(key);
    Ok(match worst {
        End::Stopped | End::Idle => (Outcome::Fine, None),
        End::Busy(why) => (Outcome::Busy, Some(why)),
        End::Failed(why) => (Outcome::Failed, Some(why)),
        End::Corrupt(why) => (Outcome::Corrupt, Some(why)),
        End::Local(e) => return Err(e),
    })
}

/// One worker: takes units the holder has until the session stops.
async fn run_worker(
    transfer: &Arc<Transfer>,
    key: HolderKey,
    link: &Link,
    stop: &CancellationToken,
) -> End {
    let mut idle_since: Option<Instant> = None;
    loop {
        if stop.is_cancelled() {
            return End::Stopped;
        }
        let changed = transfer.changed().notified();
        let assignment = match transfer.next_unit(key) {
            Next::Done => return End::Stopped,
            Next::Wait => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= IDLE_HOLDER_LIMIT && transfer.others_waiting() {
                    return End::Idle;
                }
                tokio::select! {
                    _ = stop.cancelled() => return End::Stopped,
                    _ = tokio::time::timeout(IDLE_RECHECK, changed) => continue,
                }
            }
            Next::Fetch(a) => a,
        };
        idle_since = None;
        let end = fetch(transfer, key, link, &assignment, stop).await;
        transfer.release(assignment.id);
        if let Err(end) = end {
            return end;
        }
    }
}

/// Asks a partial holder for its pieces every [`PIECES_POLL`] until it has them all.
async fn poll_pieces(
    transfer: &Arc<Transfer>,
    key: HolderKey,
    link: &Link,
    stop: &CancellationToken,
) -> End {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return End::Stopped,
            _ = tokio::time::sleep(PIECES_POLL) => {}
        }
        let has: Bitfield = tokio::select! {
            _ = stop.cancelled() => return End::Stopped,
            has = link.pieces(transfer.manifest(), transfer.me()) => match has {
                Ok(has) => has,
                Err((Outcome::Corrupt, why)) => return End::Corrupt(why),
                Err((Outcome::Busy, why)) => return End::Busy(why),
                Err((_, why)) => return End::Failed(why),
            },
        };
        if transfer.holder_gained(key, &has) {
            return End::Stopped;
        }
    }
}

/// Waits for `future` up to the stall timeout, unless the session stops first.
async fn within_stall_timeout<T>(
    transfer: &Transfer,
    stop: &CancellationToken,
    future: impl std::future::Future<Output = T>,
) -> Result<Option<T>, End> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(End::Stopped),
        outcome = tokio::time::timeout(transfer.stall_timeout(), future) => Ok(outcome.ok()),
    }
}

/// Streams one unit, verifying and writing each piece as it completes.
async fn fetch(
    transfer: &Arc<Transfer>,
    key: HolderKey,
    link: &Link,
    assignment: &Assignment,
    stop: &CancellationToken,
) -> Result<(), End> {
    let manifest = transfer.manifest().clone();
    let geometry = manifest.geometry();
    let blocks = geometry.blocks_of_pieces(assignment.pieces.clone());
    let request = transfer.me().request(pb::GetBlocksRequest {
        file: Some(pb::FileSelector {
            name: String::new(),
            content_id: manifest.content_id().to_hex(),
        }),
        first_block: blocks.start,
        block_count: blocks.end - blocks.start,
    });
    let stall = transfer.stall_timeout();
    let mut channel = link.channel.clone();
    tracing::debug!(pieces = ?assignment.pieces, "requesting");
    let call = blocks_call::get_blocks(&mut channel, request);
    let mut stream = match within_stall_timeout(transfer, stop, call).await? {
        None => return Err(End::Failed(format!("no answer within {stall:?}"))),
        Some(Err(status)) if status.code() == Code::ResourceExhausted => {
            return Err(End::Busy(status.message().to_string()))
        }
        Some(Err(status)) => return Err(End::Failed(describe(&status))),
        Some(Ok(blocks)) => blocks,
    };
    let mut piece = assignment.pieces.start;
    let mut expected_block = blocks.start;
    // The part of a piece that straddles messages, gathered (as slices: no copy).
    let mut gathered = Rope::default();
    let mut pending: Option<PendingPiece> = None;
    while piece < assignment.pieces.end {
        let message = match within_stall_timeout(transfer, stop, stream.message()).await {
            Err(stopped) => {
                // A piece already received is kept: it counts for the resume.
                if let Some(previous) = pending.take() {
                    finish_piece(transfer, key, previous).await?;
                }
                return Err(stopped);
            }
            Ok(None) => return Err(End::Failed(format!("stalled: no data for {stall:?}"))),
            Ok(Some(Err(status))) => return Err(End::Failed(describe(&status))),
            Ok(Some(Ok(None))) => {
                return Err(End::Failed(
                    "stream ended before the range was complete".into(),
                ))
            }
            Ok(Some(Ok(Some(m)))) => m,
        };
        if let Some(metrics) = transfer.metrics() {
            metrics.received(message.data.len());
        }
        if message.first_block != expected_block || message.data.is_empty() {
            return Err(End::Corrupt(format!(
                "sent block {} ({} bytes) where block {expected_block} was due",
                message.first_block,
                message.data.len()
            )));
        }
        expected_block += message.data.len().div_ceil(BLOCK_SIZE as usize) as u64;
        let mut incoming = message.data;
        while piece < assignment.pieces.end {
            let range = geometry.piece_bytes(piece);
            let len = (range.end - range.start) as usize;
            gathered.append(incoming.split_to(len - gathered.len()));
            if gathered.len() < len {
                break;
            }
            let data = std::mem::take(&mut gathered);
            if let Some(previous) = pending.take() {
                finish_piece(transfer, key, previous).await?;
            }
            // In endgame another holder may have delivered this piece already.
            if !transfer.is_done(piece) {
                pending = Some(queue_piece(transfer, piece, range.start, data).await?);
            }
            piece += 1;
        }
        if !incoming.is_empty() {
            return Err(End::Corrupt("sent more bytes than the range holds".into()));
        }
        // Endgame: stop streaming once others have delivered the rest of this unit.
        if piece < assignment.pieces.end && transfer.all_done(piece..assignment.pieces.end) {
            break;
        }
    }
    if let Some(previous) = pending.take() {
        finish_piece(transfer, key, previous).await?;
    }
    Ok(())
}

/// Hands a piece to the download's writer (waiting while its queue is full).
async fn queue_piece(
    transfer: &Transfer,
    piece: PieceIndex,
    offset: u64,
    data: Rope,
) -> Result<PendingPiece, End> {
    let len = data.len() as u64;
    let written = transfer
        .writer()
        .submit(piece, offset, data)
        .await
        .map_err(|e| failure(transfer, piece, e))?;
    Ok(PendingPiece {
        piece,
        len,
        written,
    })
}

/// Waits for a piece's verification and write, then records it.
async fn finish_piece(
    transfer: &Transfer,
    key: HolderKey,
    pending: PendingPiece,
) -> Result<(), End> {
    let piece = pending.piece;
    pending
        .written
        .wait()
        .await
        .map_err(|e| failure(transfer, piece, e))?;
    transfer.piece_done(key, pending.piece, pending.len);
    Ok(())
}

fn failure(transfer: &Transfer, piece: PieceIndex, failure: PieceFailure) -> End {
    match failure {
        PieceFailure::Corrupt => {
            if let Some(metrics) = transfer.metrics() {
                metrics.piece_rejected();
            }
            End::Corrupt(format!("sent corrupt data for piece {piece}"))
        }
        PieceFailure::Local(e) => End::Local(e),
    }
}
