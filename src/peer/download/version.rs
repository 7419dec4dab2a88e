//! Before any data moves: which version of the file to fetch, who holds it, and a manifest for it
//! that matches its content id (so no holder can make us accept other content).

use super::{describe, DownloadError, DownloadRequest};
use crate::chunking::{ContentId, Geometry, Manifest};
use crate::grpc::{ClientChannel, ClientSecurity};
use crate::pb::peer as pb;
use crate::pb::peer::peer_client::PeerClient;
use crate::pb::tracker::FileVersion;

/// A holder of the chosen version, with a client to it.
pub(super) struct Holder {
    pub(super) peer_id: String,
    pub(super) address: String,
    pub(super) client: PeerClient<ClientChannel>,
}

/// Picks the version to fetch: the one asked for, else the one with most holders (with a note
/// when there was a choice). The tracker lists versions by holder count, most first.
pub(super) fn pick_version<'a>(
    versions: &'a [FileVersion],
    request: &DownloadRequest,
) -> Result<(&'a FileVersion, Option<String>), DownloadError> {
    let first = versions
        .first()
        .ok_or_else(|| DownloadError::NotFound(request.name.clone()))?;
    let note = (versions.len() > 1).then(|| {
        format!(
            "{} versions of {:?} exist; picked {} (most holders: {}); choose one with get {}@<id-prefix>",
            versions.len(),
            request.name,
            &first.content_id[..12],
            first.holders.len(),
            request.name
        )
    });
    Ok((first, note))
}

/// Clients to the holders of `version` other than `me`. Each download opens its own channels
/// (they connect lazily, on the first call): nothing is shared with other downloads, so
/// concurrent downloads from one holder use one connection each. A holder whose address does not
/// parse is left out.
pub(super) fn connect_holders(
    version: &FileVersion,
    me: &str,
    security: &ClientSecurity,
) -> Vec<Holder> {
    version
        .holders
        .iter()
        .filter(|h| h.peer_id != me)
        .filter_map(|h| {
            let channel = match security.channel(&h.address) {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::warn!(holder = %h.peer_id, address = %h.address, error = %e, "holder left out: bad address");
                    return None;
                }
            };
            Some(Holder {
                peer_id: h.peer_id.clone(),
                address: h.address.clone(),
                client: PeerClient::new(channel)
                    .max_decoding_message_size(crate::grpc::MAX_MESSAGE_SIZE),
            })
        })
        .collect()
}

/// Asks holders in turn for the manifest until one matches the content id.
pub(super) async fn fetch_manifest(
    name: &str,
    content_id: ContentId,
    size: u64,
    holders: &[Holder],
) -> Result<Manifest, DownloadError> {
    let mut problems = Vec::new();
    for holder in holders {
        let peer_id = &holder.peer_id;
        let request = pb::GetManifestRequest {
            file: Some(pb::FileSelector {
                name: String::new(),
                content_id: content_id.to_hex(),
            }),
        };
        let mut client = holder.client.clone();
        let answer = tokio::time::timeout(
            crate::peer::tracker_link::CALL_TIMEOUT,
            client.get_manifest(request),
        )
        .await;
        let response = match answer {
            Err(_) => {
                problems.push(format!("{peer_id}: no answer"));
                continue;
            }
            Ok(Err(status)) => {
                problems.push(format!("{peer_id}: {}", describe(&status)));
                continue;
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        match check_manifest(content_id, size, response) {
            Ok(m) => return Ok(m),
            Err(why) => {
                tracing::warn!(holder = %peer_id, "bad manifest: {why}");
                problems.push(format!("{peer_id}: {why}"));
            }
        }
    }
    Err(DownloadError::NoManifest {
        name: name.to_string(),
        details: problems.join("; "),
    })
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
