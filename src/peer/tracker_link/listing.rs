//! The tracker's listings (`ListPeers`, `ListFiles`), gathered page by page from one tracker:
//! the first tracker that answers the first page gives every page (page tokens are a tracker's
//! own), bounded in entries, pages and time whatever it answers.

use super::{TrackerLink, TrackerLinkError};
use crate::grpc::ClientChannel;
use crate::pb::tracker as pb;
use crate::pb::tracker::tracker_client::TrackerClient;
use std::future::Future;
use std::time::Duration;
use tonic::Status;

/// Entries asked for per listing page: the tracker's maximum (it caps larger asks anyway).
const PAGE_SIZE: u32 = 5000;
/// Most entries gathered for one listing (`peers`, `files`): far past what a person reads, and
/// about 40 MiB of answers at most, whatever the tracker holds or claims.
const MAX_LISTED: usize = 200_000;
/// Most pages asked for one listing: a tracker that answers short pages forever stops here.
const MAX_PAGES: usize = 1000;
/// Deadline of a whole listing, all pages together (finding a tracker that answers included).
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

impl TrackerLink {
    /// Gathers a listing page by page: `ask(client, token)` asks for the page after `token`,
    /// `split` takes its entries and next token. The first page is asked of the trackers in
    /// turn until one answers; the other pages of that one. Bounded by [`MAX_LISTED`] entries,
    /// [`MAX_PAGES`] pages and [`LIST_TIMEOUT`]: past the first two it keeps what it has and
    /// logs that the listing was cut; past the deadline it fails.
    async fn list_all<R, T, F, Fut>(
        &self,
        rpc: &'static str,
        mut ask: F,
        split: fn(R) -> (Vec<T>, String),
    ) -> Result<Vec<T>, TrackerLinkError>
    where
        F: FnMut(TrackerClient<ClientChannel>, String) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let gather = async {
            let (at, first) = self
                .try_each(rpc, self.query_order(), |c| ask(c, String::new()))
                .await?;
            let tracker = &self.trackers[at];
            let mut page = first?;
            let mut all = Vec::new();
            let mut token = String::new();
            for pages in 1..=MAX_PAGES {
                let (entries, next) = split(page);
                let room = MAX_LISTED - all.len();
                if entries.len() > room {
                    all.extend(entries.into_iter().take(room));
                    tracing::warn!("{rpc}: listing cut at {MAX_LISTED} entries");
                    return Ok(all);
                }
                all.extend(entries);
                if next.is_empty() {
                    return Ok(all);
                }
                if next == token {
                    tracing::warn!(
                        "{rpc}: the tracker gave the same page token again; listing cut"
                    );
                    return Ok(all);
                }
                if pages == MAX_PAGES {
                    break;
                }
                token = next;
                let asked = token.clone();
                page = tracker
                    .call(rpc, tracker.call_timeout(), |c| ask(c, asked))
                    .await?;
            }
            tracing::warn!("{rpc}: listing cut after {MAX_PAGES} pages");
            Ok(all)
        };
        tokio::time::timeout(LIST_TIMEOUT, gather)
            .await
            .unwrap_or_else(|_| {
                Err(TrackerLinkError::Unreachable {
                    address: self.address().to_string(),
                    detail: format!("{rpc}: the listing did not end within {LIST_TIMEOUT:?}"),
                })
            })
    }

    /// Live peers, every page.
    pub(crate) async fn peers(&self) -> Result<Vec<pb::PeerSummary>, TrackerLinkError> {
        self.list_all(
            "ListPeers",
            |mut c, page_token| async move {
                c.list_peers(pb::ListPeersRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                })
                .await
            },
            |r: pb::ListPeersResponse| (r.peers, r.next_page_token),
        )
        .await
    }

    /// Every file in the swarm, every page.
    pub(crate) async fn files(&self) -> Result<Vec<pb::FileSummary>, TrackerLinkError> {
        self.list_all(
            "ListFiles",
            |mut c, page_token| async move {
                c.list_files(pb::ListFilesRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                })
                .await
            },
            |r: pb::ListFilesResponse| (r.files, r.next_page_token),
        )
        .await
    }
}
