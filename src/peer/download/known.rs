//! The holders one download knows of, and which of them it may contact: pure and synchronous.
//!
//! Holders are learned from the tracker (at the start and on every refresh) and from other
//! holders (peer exchange). The set is bounded ([`MAX_KNOWN_HOLDERS`]); the download connects to
//! a bounded number of them at a time, picked at random among those it may contact, so that a
//! long list of dead entries costs little and a crowd spreads over its holders. A holder that
//! failed or stalled is retried after an exponential backoff; one that sent corrupt data is never
//! contacted again by this download.

use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Most holders one download remembers. Past it, newly learned holders are dropped: the list
/// from a hostile tracker or peer cannot grow memory without bound.
pub(crate) const MAX_KNOWN_HOLDERS: usize = 16_384;
/// Backoff after a holder's first failure; doubled for each further one in a row.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest backoff.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Where a holder stands with this download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// May be contacted.
    Idle,
    /// Being contacted or connected now.
    Connected,
    /// Failed or stalled; may be contacted again after this instant.
    Backoff(Instant),
    /// Sent corrupt data: never again.
    Banned,
}

/// How a connection to a holder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It had nothing more for us, or the download finished: contact again freely.
    Fine,
    /// It refused for now (busy, choked): retry after the first backoff, not counted as a failure.
    Busy,
    /// It failed, timed out or stalled: retry after a growing backoff.
    Failed,
    /// It sent corrupt data: never again.
    Corrupt,
}

/// One known holder.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    /// Where its Peer service listens (`host:port`), as last learned.
    pub address: String,
    /// Whether it was last said to hold only part of the file.
    pub partial: bool,
    /// Its standing.
    pub standing: Standing,
    failures: u32,
}

/// The holders a download knows.
///
/// Every operation costs the holders it touches, not the size of the set: those that may be
/// contacted now wait in `ready` (taken at random), those in backoff in `waiting` (by time).
#[derive(Debug, Default)]
pub(crate) struct KnownHolders {
    holders: HashMap<String, Known>,
    /// Peer ids that may be contacted now (standing `Idle`), in no order.
    ready: Vec<String>,
    /// Peer ids in backoff, soonest first.
    waiting: BinaryHeap<Reverse<(Instant, String)>>,
    /// How many are `Connected`.
    connected: usize,
    /// How many are `Banned`.
    banned: usize,
}

impl KnownHolders {
    /// Learns (or refreshes the address of) a holder. Returns true if it is new. A banned holder
    /// stays banned whatever its address; a full set takes no new holders.
    pub(crate) fn learn(&mut self, peer_id: &str, address: &str, partial: bool) -> bool {
        if let Some(known) = self.holders.get_mut(peer_id) {
            if known.standing != Standing::Connected {
                known.address = address.to_string();
            }
            known.partial = partial;
            return false;
        }
        if self.holders.len() >= MAX_KNOWN_HOLDERS {
            return false;
        }
        self.holders.insert(
            peer_id.to_string(),
            Known {
                address: address.to_string(),
                partial,
                standing: Standing::Idle,
                failures: 0,
            },
        );
        self.ready.push(peer_id.to_string());
        true
    }

    /// How many holders are known.
    pub(crate) fn len(&self) -> usize {
        self.holders.len()
    }

    /// A known holder.
    #[cfg(test)]
    pub(crate) fn get(&self, peer_id: &str) -> Option<&Known> {
        self.holders.get(peer_id)
    }

    /// How many are connected (or being contacted).
    pub(crate) fn connected(&self) -> usize {
        self.connected
    }

    /// Moves the holders whose backoff has passed to `ready`.
    fn wake(&mut self, now: Instant) {
        while let Some(Reverse((until, _))) = self.waiting.peek() {
            if *until > now {
                break;
            }
            let Some(Reverse((_, peer_id))) = self.waiting.pop() else {
                break;
            };
            if let Some(known) = self.holders.get_mut(&peer_id) {
                if matches!(known.standing, Standing::Backoff(_)) {
                    known.standing = Standing::Idle;
                    self.ready.push(peer_id);
                }
            }
        }
    }

    /// Up to `n` holders to contact now, chosen at random among those that may be contacted;
    /// they count as connected until [`KnownHolders::disconnected`].
    pub(crate) fn take(
        &mut self,
        n: usize,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Vec<(String, String)> {
        self.wake(now);
        let mut chosen = Vec::new();
        while chosen.len() < n && !self.ready.is_empty() {
            let peer_id = self
                .ready
                .swap_remove(rng.random_range(0..self.ready.len()));
            let Some(known) = self.holders.get_mut(&peer_id) else {
                continue;
            };
            if known.standing != Standing::Idle {
                continue;
            }
            known.standing = Standing::Connected;
            self.connected += 1;
            chosen.push((peer_id, known.address.clone()));
        }
        chosen
    }

    /// Records how a connection ended.
    pub(crate) fn disconnected(&mut self, peer_id: &str, outcome: Outcome, now: Instant) {
        let Some(known) = self.holders.get_mut(peer_id) else {
            return;
        };
        if known.standing != Standing::Connected {
            return;
        }
        self.connected -= 1;
        let backoff = match outcome {
            Outcome::Fine => {
                known.failures = 0;
                known.standing = Standing::Idle;
                self.ready.push(peer_id.to_string());
                return;
            }
            Outcome::Corrupt => {
                known.standing = Standing::Banned;
                self.banned += 1;
                return;
            }
            Outcome::Busy => FIRST_BACKOFF,
            Outcome::Failed => {
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << known.failures.min(16))
                    .min(MAX_BACKOFF);
                known.failures += 1;
                backoff
            }
        };
        known.standing = Standing::Backoff(now + backoff);
        self.waiting
            .push(Reverse((now + backoff, peer_id.to_string())));
    }

    /// Marks a connected holder as having delivered verified data: its failure count restarts.
    pub(crate) fn delivered(&mut self, peer_id: &str) {
        if let Some(known) = self.holders.get_mut(peer_id) {
            known.failures = 0;
        }
    }

    /// True if some holder may be contacted now.
    pub(crate) fn contactable_now(&self, now: Instant) -> bool {
        !self.ready.is_empty()
            || self
                .waiting
                .peek()
                .is_some_and(|Reverse((until, _))| *until <= now)
    }

    /// When a holder may next be contacted: now if one may, else when the first backoff ends;
    /// `None` if none ever may (all connected or banned).
    pub(crate) fn next_retry(&self, now: Instant) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(now);
        }
        self.waiting.peek().map(|Reverse((until, _))| *until)
    }

    /// True if every known holder sent corrupt data (or none is known).
    pub(crate) fn all_banned(&self) -> bool {
        self.banned == self.holders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn contact_is_bounded_random_and_backs_off() {
        let mut rng = SmallRng::seed_from_u64(5);
        let mut known = KnownHolders::default();
        for i in 0..100 {
            assert!(known.learn(&format!("p{i}"), &format!("10.0.0.{i}:1"), false));
        }
        assert!(!known.learn("p1", "10.9.9.9:1", true));
        assert_eq!(known.get("p1").unwrap().address, "10.9.9.9:1");
        let t0 = Instant::now();
        let first = known.take(8, t0, &mut rng);
        assert_eq!(first.len(), 8);
        assert_eq!(known.connected(), 8);
        let second = known.take(8, t0, &mut rng);
        assert!(second
            .iter()
            .all(|(id, _)| !first.iter().any(|(f, _)| f == id)));

        let (failing, _) = &first[0];
        known.disconnected(failing, Outcome::Failed, t0);
        assert!(matches!(
            known.get(failing).unwrap().standing,
            Standing::Backoff(_)
        ));
        // Take everything contactable now: the failing one is not among them.
        let rest = known.take(1000, t0, &mut rng);
        assert!(rest.iter().all(|(id, _)| id != failing));
        assert_eq!(known.next_retry(t0), Some(t0 + FIRST_BACKOFF));
        let later = t0 + FIRST_BACKOFF;
        assert_eq!(known.take(10, later, &mut rng).len(), 1);
        // A second failure in a row doubles the wait.
        known.disconnected(failing, Outcome::Failed, later);
        assert_eq!(known.next_retry(later), Some(later + FIRST_BACKOFF * 2));
    }

    #[test]
    fn corrupt_holders_are_never_contacted_again() {
        let mut rng = SmallRng::seed_from_u64(6);
        let mut known = KnownHolders::default();
        known.learn("liar", "1.1.1.1:1", false);
        let now = Instant::now();
        assert_eq!(known.take(1, now, &mut rng).len(), 1);
        known.disconnected("liar", Outcome::Corrupt, now);
        known.learn("liar", "2.2.2.2:2", false);
        assert!(known.all_banned());
        assert!(known
            .take(1, now + Duration::from_secs(3600), &mut rng)
            .is_empty());
        assert_eq!(known.next_retry(now), None);
    }

    #[test]
    fn the_set_is_bounded() {
        let mut known = KnownHolders::default();
        for i in 0..MAX_KNOWN_HOLDERS + 10 {
            known.learn(&format!("p{i}"), "h:1", false);
        }
        assert_eq!(known.len(), MAX_KNOWN_HOLDERS);
    }
}
