//! Where a download learns of more holders: the tracker, asked again during the download, and
//! peer exchange (connected holders' `GetHolders`, and the holders this peer itself heard of).
//! Everything learned is checked ([`HolderAddr::parse`]) and bounded before use.

use super::{State, Transfer, PEX_FANOUT};
use crate::peer::download::contact::Link;
use crate::peer::download::version::{parse_versions, HolderAddr};
use crate::peer::download::Context;
use rand::seq::IteratorRandom;
use std::time::Instant;
use tokio::task::JoinSet;

/// Where a download heard of holders: what it tells this peer's [`SwarmBook`](crate::peer::book)
/// (which answers other peers' exchanges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::peer::download) enum Heard {
    /// The tracker listed them (it drops the silent): first-hand, refreshes the book.
    Tracker,
    /// A holder's `GetHolders` answer: hearsay, added to the book but never refreshing it.
    Exchange,
    /// This peer's own book: nothing to tell it.
    Book,
}

impl Transfer {
    /// Learns holders, never this peer itself; tells the book as `heard` says.
    pub(super) fn learn(&self, holders: impl IntoIterator<Item = HolderAddr>, heard: Heard) {
        let now = Instant::now();
        let content_id = self.manifest.content_id();
        let mut fresh = 0;
        let mut state = self.lock();
        for h in holders {
            if h.peer_id == self.setup.my_id {
                continue;
            }
            if state.known.learn(&h.peer_id, &h.address, h.partial) {
                fresh += 1;
            }
            let book = &self.setup.book;
            match heard {
                Heard::Tracker => book.learn(content_id, &h.peer_id, &h.address, h.partial, now),
                Heard::Exchange => {
                    book.learn_hearsay(content_id, &h.peer_id, &h.address, h.partial, now)
                }
                Heard::Book => {}
            }
        }
        drop(state);
        if fresh > 0 {
            tracing::debug!(fresh, "learned of more holders");
            self.wake.notify_one();
        }
    }

    /// The holders the tracker lists now for this download's content.
    pub(super) fn ask_tracker<'a>(
        &self,
        ctx: &'a Context<'_>,
        name: &'a str,
        content_hex: &'a str,
    ) -> impl std::future::Future<Output = Vec<HolderAddr>> + Send + 'a {
        let content_id = self.manifest.content_id();
        async move {
            match ctx.tracker.who_has(name, content_hex).await {
                Ok(versions) => parse_versions(name, versions)
                    .0
                    .into_iter()
                    .filter(|v| v.content_id == content_id)
                    .flat_map(|v| v.holders)
                    .collect(),
                Err(e) => {
                    tracing::debug!("tracker refresh failed: {e}");
                    Vec::new()
                }
            }
        }
    }

    /// Asks up to [`PEX_FANOUT`] connected holders, at random, for the holders they know; and
    /// takes the holders this peer itself heard of (downloaders that fetched from it said where
    /// they listen).
    pub(super) fn exchange(&self, exchanges: &mut JoinSet<Vec<HolderAddr>>) {
        let heard = self.setup.book.holders(
            &self.manifest.content_id(),
            crate::peer::book::MAX_EXCHANGED,
            &self.setup.my_id,
            Instant::now(),
        );
        // Not written back: re-learning its own entries would keep them fresh forever.
        self.learn(
            heard.into_iter().map(|h| HolderAddr {
                peer_id: h.peer_id,
                address: h.address,
                partial: h.partial,
            }),
            Heard::Book,
        );
        let links: Vec<Link> = {
            let mut state = self.lock();
            let State {
                sessions,
                links,
                rng,
                ..
            } = &mut *state;
            sessions
                .values()
                .filter_map(|s| links.get(&s.peer_id).cloned())
                .choose_multiple(rng, PEX_FANOUT)
        };
        for link in links {
            let me = self.setup.me.clone();
            let content_id = self.manifest.content_id();
            exchanges.spawn(async move {
                match link.holders(content_id, &me).await {
                    // Checked and bounded by `Link::holders`.
                    Ok(holders) => holders,
                    Err((_, why)) => {
                        tracing::debug!(holder = %link.peer_id, "peer exchange failed: {why}");
                        Vec::new()
                    }
                }
            });
        }
    }
}
