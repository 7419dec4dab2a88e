//! Talking to holders: a client per holder that says who we are, short deadlines on every
//! control call, and the parallel hunt for a manifest.
//!
//! Control calls (manifest, piece bitfield, peer exchange) have a deadline of
//! [`CONTROL_TIMEOUT`], so a dead or silent holder costs a new download a fraction of a second,
//! not a connect timeout. The manifest is asked of up to [`MANIFEST_PARALLEL`] holders at once,
//! refilled as answers come in; the first one that matches the content id wins and the others are
//! abandoned.
//!
//! Clients come from the node's [`ChannelPool`]: every download from a holder shares one
//! connection to it. A control call that fails for the connection's sake (a transport error, or
//! no answer in time) tells the pool, so the next download dials that holder afresh.

use super::known::{KnownHolders, Outcome};
use super::version::{parse_exchanged, HolderAddr};
use super::{describe, DownloadError};
use crate::chunking::{Bitfield, ContentId, Geometry, Manifest};
use crate::grpc::{ChannelPool, ClientChannel, ClientSecurity, Lease};
use crate::names;
use crate::pb::peer as pb;
use crate::pb::peer::peer_client::PeerClient;
use crate::peer::server::{PEER_ADDRESS_HEADER, PEER_ID_HEADER};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request};

/// Deadline of a control call to a holder, connecting included.
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_millis(1500);
/// Holders asked for the manifest at once.
pub(crate) const MANIFEST_PARALLEL: usize = 16;
/// Most problems quoted in a "no manifest" error.
const MAX_PROBLEMS_QUOTED: usize = 8;
/// Longest error message of a holder quoted in a log or an error (a status message can be
/// kilobytes long).
pub(crate) const MAX_QUOTED_CHARS: usize = 200;

/// Who this peer is, as told to holders (see `proto/peer.proto`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Identity {
    peer_id: Option<MetadataValue<Ascii>>,
    address: Option<MetadataValue<Ascii>>,
}

impl Identity {
    /// This peer's id and, if it knows it, the address others reach its Peer service at.
    pub(crate) fn new(peer_id: &str, address: Option<&str>) -> Self {
        Identity {
            peer_id: MetadataValue::try_from(peer_id).ok(),
            address: address.and_then(|a| MetadataValue::try_from(a).ok()),
        }
    }

    /// `message` as a request that carries this identity.
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(id) = &self.peer_id {
            request.metadata_mut().insert(PEER_ID_HEADER, id.clone());
        }
        if let Some(address) = &self.address {
            request
                .metadata_mut()
                .insert(PEER_ADDRESS_HEADER, address.clone());
        }
        request
    }
}

/// How a download reaches holders: its node's channel pool, and what it presents.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dialer<'a> {
    pub(crate) pool: &'a ChannelPool,
    pub(crate) security: &'a ClientSecurity,
}

/// A client to one holder.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) peer_id: String,
    pub(crate) address: String,
    pub(crate) client: PeerClient<ClientChannel>,
    /// The same channel, for `GetBlocks` below tonic's codec (see [`super::blocks_call`]).
    pub(crate) channel: ClientChannel,
    /// The hold on the pooled channel: while a link lives, its channel stays pooled.
    lease: Lease,
    /// The holder's `GetPieces` answer, asked together with its manifest (one round trip
    /// instead of two before the first session); taken, unchecked, by the first
    /// [`Link::pieces`], which checks it like any other answer.
    prefetched: Arc<Mutex<Option<pb::GetPiecesResponse>>>,
}

impl Link {
    /// A client to `address` on the pool's channel for it (lazily connecting if new), presenting
    /// `security`; `None` if the address cannot be dialled.
    pub(crate) fn dial(
        peer_id: &str,
        address: &str,
        pool: &ChannelPool,
        security: &ClientSecurity,
    ) -> Option<Link> {
        let (channel, lease) = pool.channel(address, security).ok()?;
        Some(Link {
            peer_id: peer_id.to_string(),
            address: address.to_string(),
            client: PeerClient::new(channel.clone())
                .max_decoding_message_size(crate::grpc::MAX_MESSAGE_SIZE),
            channel,
            lease,
            prefetched: Arc::default(),
        })
    }

    /// The connection to this holder failed: the pool dials afresh for the next caller.
    pub(crate) fn connection_failed(&self) {
        self.lease.connection_failed();
    }

    /// A control call on this link (`call` makes it on a client), with its deadline.
    ///
    /// A pooled connection can break between two downloads (the holder restarted, or closed it
    /// as idle just as we used it); a call that fails for that reason is made once more within
    /// the same deadline (control calls are idempotent), on the same channel, which dials
    /// afresh. A connection that fails again, or is silent, is dropped from the pool.
    async fn control<T, F, Fut>(&self, mut call: F) -> Result<T, (Outcome, String)>
    where
        F: FnMut(PeerClient<ClientChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + CONTROL_TIMEOUT;
        let mut result = control(call(self.client.clone()), deadline).await;
        if let Err((_, Some(Broken::Transport))) = &result {
            result = control(call(self.client.clone()), deadline).await;
        }
        result.map_err(|(failure, broken)| {
            if broken.is_some() {
                self.connection_failed();
            }
            failure
        })
    }

    fn selector(content_id: ContentId) -> Option<pb::FileSelector> {
        Some(pb::FileSelector {
            name: String::new(),
            content_id: content_id.to_hex(),
        })
    }

    /// The holder's manifest for `content_id`, checked against it and the tracker's `size`.
    /// Which pieces it has is asked at the same time (on the same connection) and kept for the
    /// first [`Link::pieces`]: a small file's download then waits one round trip less.
    pub(crate) async fn manifest(
        &self,
        content_id: ContentId,
        size: u64,
        me: &Identity,
    ) -> Result<Manifest, (Outcome, String)> {
        let manifest = self.control(|mut client| {
            let request = me.request(pb::GetManifestRequest {
                file: Self::selector(content_id),
            });
            async move { client.get_manifest(request).await }
        });
        let pieces = self.control(|mut client| {
            let request = me.request(pb::GetPiecesRequest {
                file: Self::selector(content_id),
            });
            async move { client.get_pieces(request).await }
        });
        let (manifest, pieces) = tokio::join!(manifest, pieces);
        // A failure here is no verdict: the first `pieces` asks again.
        if let Ok(answer) = pieces {
            *self.prefetched.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
        }
        check_manifest(content_id, size, manifest?).map_err(|why| (Outcome::Corrupt, why))
    }

    /// Which pieces the holder has. A holder too old to answer (UNIMPLEMENTED) is taken to have
    /// all of them: before partial holders existed, every holder was complete.
    pub(crate) async fn pieces(
        &self,
        manifest: &Manifest,
        me: &Identity,
    ) -> Result<Bitfield, (Outcome, String)> {
        let pieces = manifest.geometry().piece_count();
        let asked = |mut client: PeerClient<ClientChannel>| {
            let request = me.request(pb::GetPiecesRequest {
                file: Self::selector(manifest.content_id()),
            });
            async move { client.get_pieces(request).await }
        };
        let prefetched = self
            .prefetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let answer = match prefetched {
            Some(answer) => Ok(answer),
            None => self.control(asked).await,
        };
        match answer {
            Ok(answer) => check_pieces(manifest.content_id(), pieces, &answer)
                .map_err(|why| (Outcome::Corrupt, why)),
            Err((_, why)) if why.starts_with("Unimplemented") => Ok(Bitfield::full(pieces)),
            Err(e) => Err(e),
        }
    }

    /// Peer exchange: the holders of `content_id` this holder knows, checked (see
    /// [`parse_exchanged`]).
    pub(crate) async fn holders(
        &self,
        content_id: ContentId,
        me: &Identity,
    ) -> Result<Vec<HolderAddr>, (Outcome, String)> {
        let answer = self
            .control(|mut client| {
                let request = me.request(pb::GetHoldersRequest {
                    content_id: content_id.to_hex(),
                });
                async move { client.get_holders(request).await }
            })
            .await?;
        Ok(parse_exchanged(&self.peer_id, &answer.holders))
    }
}

/// A holder's `GetPieces` answer, accepted only if it is about `content_id`, gives the file's
/// `pieces`, and its bitfield has exactly that many bits and agrees with its `complete` flag.
pub(crate) fn check_pieces(
    content_id: ContentId,
    pieces: u64,
    answer: &pb::GetPiecesResponse,
) -> Result<Bitfield, String> {
    if answer.content_id != content_id.to_hex() {
        return Err(format!(
            "answered about another file ({:?})",
            names::shown(&names::at_most(&answer.content_id, 64))
        ));
    }
    if answer.piece_count != pieces {
        return Err(format!(
            "said the file has {} pieces, not {pieces}",
            answer.piece_count
        ));
    }
    let have = Bitfield::from_bytes(&answer.bitfield, pieces).map_err(|e| e.to_string())?;
    if have.is_full() != answer.complete {
        return Err(format!(
            "said complete={} with {} of {pieces} pieces",
            answer.complete,
            have.count()
        ));
    }
    Ok(have)
}

/// How a failed control call says the connection itself failed, not just the holder's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// A transport error: refused, reset, closed.
    Transport,
    /// No answer by the deadline: the connection may be dead silent.
    Silent,
}

/// A control call with its `deadline`; a failure says how the holder should be treated, and
/// whether the connection itself failed.
async fn control<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    deadline: tokio::time::Instant,
) -> Result<T, ((Outcome, String), Option<Broken>)> {
    match tokio::time::timeout_at(deadline, call).await {
        Err(_) => Err((
            (
                Outcome::Failed,
                format!("no answer within {CONTROL_TIMEOUT:?}"),
            ),
            Some(Broken::Silent),
        )),
        Ok(Err(status)) if status.code() == Code::ResourceExhausted => {
            Err(((Outcome::Busy, describe(&status)), None))
        }
        Ok(Err(status)) => {
            let broken = crate::grpc::is_connection_failure(&status).then_some(Broken::Transport);
            Err(((Outcome::Failed, describe(&status)), broken))
        }
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

/// A holder's manifest, accepted only if its geometry is sane, its size is the tracker's and its
/// piece hashes combine into `content_id`.
fn check_manifest(
    content_id: ContentId,
    size: u64,
    response: pb::GetManifestResponse,
) -> Result<Manifest, String> {
    let geometry =
        Geometry::new(response.size, response.piece_size as u64).map_err(|e| e.to_string())?;
    if geometry.size() != size {
        return Err(format!(
            "size {} differs from the tracker's {size}",
            geometry.size()
        ));
    }
    let hashes = response
        .piece_hashes
        .into_iter()
        .map(|b| b.to_vec())
        .collect();
    Manifest::from_parts(content_id, geometry, hashes).map_err(|e| e.to_string())
}

/// Asks known holders for the manifest, [`MANIFEST_PARALLEL`] at a time, until one gives a
/// manifest that matches `content_id`. Returns it with the link to the holder that gave it (it
/// stays connected in `known`). Holders that failed are backed off, liars banned.
pub(crate) async fn find_manifest(
    name: &str,
    content_id: ContentId,
    size: u64,
    known: &mut KnownHolders,
    dialer: Dialer<'_>,
    me: &Identity,
    cancel: &CancellationToken,
) -> Result<(Manifest, Link), DownloadError> {
    let mut rng = SmallRng::from_os_rng();
    let mut attempts = JoinSet::new();
    let mut asking: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut failures = 0usize;
    loop {
        let room = MANIFEST_PARALLEL.saturating_sub(attempts.len());
        for (peer_id, address) in known.take(room, Instant::now(), &mut rng) {
            let Some(link) = Link::dial(&peer_id, &address, dialer.pool, dialer.security) else {
                known.disconnected(&peer_id, Outcome::Corrupt, Instant::now());
                problems.push(format!("{peer_id}: bad address {address:?}"));
                continue;
            };
            let me = me.clone();
            asking.push(peer_id);
            attempts.spawn(async move {
                let result = link.manifest(content_id, size, &me).await;
                (link, result)
            });
        }
        let joined = tokio::select! {
            _ = cancel.cancelled() => return Err(DownloadError::Cancelled),
            joined = attempts.join_next() => joined,
        };
        let Some(joined) = joined else {
            // Nothing in flight and nobody left to ask now.
            failures += problems.len().saturating_sub(MAX_PROBLEMS_QUOTED);
            problems.truncate(MAX_PROBLEMS_QUOTED);
            if failures > 0 {
                problems.push(format!("and {failures} more"));
            }
            return Err(DownloadError::NoManifest {
                name: name.to_string(),
                details: if problems.is_empty() {
                    "no holder could be reached".into()
                } else {
                    problems.join("; ")
                },
            });
        };
        let Ok((link, result)) = joined else { continue };
        asking.retain(|id| *id != link.peer_id);
        match result {
            Ok(manifest) => {
                // The others are abandoned: free to be contacted again by the transfer.
                attempts.abort_all();
                for peer_id in asking {
                    known.disconnected(&peer_id, Outcome::Fine, Instant::now());
                }
                return Ok((manifest, link));
            }
            Err((outcome, why)) => {
                if outcome == Outcome::Corrupt {
                    tracing::warn!(holder = %link.peer_id, "bad manifest: {why}");
                }
                known.disconnected(&link.peer_id, outcome, Instant::now());
                if problems.len() < MAX_PROBLEMS_QUOTED {
                    problems.push(format!("{}: {why}", link.peer_id));
                } else {
                    failures += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn answer(
        content_id: &str,
        pieces: u64,
        bitfield: &[u8],
        complete: bool,
    ) -> pb::GetPiecesResponse {
        pb::GetPiecesResponse {
            content_id: content_id.into(),
            piece_count: pieces,
            bitfield: bytes::Bytes::copy_from_slice(bitfield),
            complete,
        }
    }

    #[test]
    fn piece_answers_must_match_what_was_asked() {
        let id = ContentId::of(b"x");
        let hex = id.to_hex();
        let have = check_pieces(
            id,
            10,
            &answer(&hex, 10, &[0b1010_0000, 0b0100_0000], false),
        );
        assert_eq!(have.unwrap().iter().collect::<Vec<_>>(), vec![0, 2, 9]);
        assert!(check_pieces(id, 10, &answer(&hex, 10, &[0xff, 0xc0], true)).is_ok());
        for (bad, why) in [
            (answer("\u{1b}[2J", 10, &[0, 0], false), "another file"),
            (
                answer(&ContentId::of(b"y").to_hex(), 10, &[0, 0], false),
                "another file",
            ),
            (answer(&hex, 11, &[0, 0], false), "11 pieces"),
            (answer(&hex, 10, &[0], false), "bytes"),
            (answer(&hex, 10, &[0, 0x20], false), "past piece"),
            (answer(&hex, 10, &[0xff, 0xc0], false), "complete=false"),
            (answer(&hex, 10, &[0xff, 0x80], true), "complete=true"),
        ] {
            let error = check_pieces(id, 10, &bad).unwrap_err();
            assert!(error.contains(why), "{error}");
            assert!(
                !error.chars().any(crate::names::is_unsafe_to_show),
                "{error:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any decoded `GetPieces` answer: no panic; accepted only as a bitfield of exactly the
        /// file's pieces that agrees with its `complete` flag; a refusal is one printable line.
        #[test]
        fn any_piece_answer_is_checked(
            pieces in prop_oneof![0u64..40, Just(u64::MAX), any::<u64>()],
            claimed in prop_oneof![0u64..40, any::<u64>()],
            bitfield in prop::collection::vec(any::<u8>(), 0..8),
            complete in any::<bool>(),
            same_id in any::<bool>(),
            other_id in any::<String>(),
        ) {
            let id = ContentId::of(b"x");
            let content_id = if same_id { id.to_hex() } else { other_id };
            let claimed = if claimed < 40 { pieces } else { claimed };
            match check_pieces(id, pieces, &answer(&content_id, claimed, &bitfield, complete)) {
                Ok(have) => {
                    prop_assert_eq!(have.len(), pieces);
                    prop_assert_eq!(have.as_bytes(), &bitfield[..]);
                    prop_assert_eq!(have.is_full(), complete);
                }
                Err(why) => prop_assert!(!why.chars().any(crate::names::is_unsafe_to_show)),
            }
        }
    }
}
