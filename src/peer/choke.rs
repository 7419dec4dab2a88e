//! Fair uploads: which downloaders a peer serves right now (BitTorrent's choking), pure and
//! synchronous.
//!
//! A peer serves at most `slots` downloaders at once (they are *unchoked*); a `GetBlocks` from
//! anyone else while every slot is taken is refused RESOURCE_EXHAUSTED ("choked"), and the
//! downloader takes those pieces from other holders and asks again later. Every [`ROTATION`] the
//! set is recomputed when someone is waiting: `slots - 1` regular slots go first to the
//! downloaders that uploaded most to this peer (reciprocation; bytes of verified pieces counted
//! since the peer started), then to those waiting longest, then to those served least in the last
//! period (so a seeder, which downloads nothing, serves a crowd round-robin); one *optimistic*
//! slot goes to a waiting downloader at random, so newcomers get their first pieces and can start
//! trading. A downloader that goes quiet frees its slot after [`IDLE`].
//!
//! Streams already running when their downloader is choked finish their range (a unit of a few
//! MiB at most); only new streams are refused. One downloader is one key, however many streams
//! and downloads it runs: its claimed peer id, or its IP address when it sends none.

use rand::rngs::SmallRng;
use rand::seq::IteratorRandom;
use rand::SeedableRng;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the set of unchoked downloaders is recomputed while someone waits.
pub(crate) const ROTATION: Duration = Duration::from_secs(4);
/// A downloader with no stream running and no request for this long frees its slot.
pub(crate) const IDLE: Duration = Duration::from_secs(2);
/// Default number of downloaders served at once.
pub const DEFAULT_UPLOAD_SLOTS: usize = 8;

/// One downloader as the choker sees it.
#[derive(Debug)]
struct Requester {
    unchoked: bool,
    streams: u32,
    last_seen: Instant,
    /// Refused while choked, since this instant: wants a slot. Those waiting longest are
    /// unchoked first (round-robin).
    waiting: Option<Instant>,
    /// Bytes sent to it since the last rotation.
    served: u64,
}

/// The answer to a new stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Serve it.
    Unchoked,
    /// Refuse it for now; the set changes within this long.
    Choked(Duration),
}

/// The choking state of one peer's uploads.
#[derive(Debug)]
pub(crate) struct Choker {
    slots: usize,
    requesters: HashMap<String, Requester>,
    last_rotation: Instant,
    rng: SmallRng,
}

impl Choker {
    /// Serves at most `slots` downloaders at once (at least 1).
    pub(crate) fn new(slots: usize, now: Instant) -> Self {
        Choker {
            slots: slots.max(1),
            requesters: HashMap::new(),
            last_rotation: now,
            rng: SmallRng::from_os_rng(),
        }
    }

    /// How many downloaders are unchoked.
    pub(crate) fn unchoked(&self) -> usize {
        self.requesters.values().filter(|r| r.unchoked).count()
    }

    #[cfg(test)]
    /// Whether `key` is unchoked now.
    pub(crate) fn is_unchoked(&self, key: &str) -> bool {
        self.requesters.get(key).is_some_and(|r| r.unchoked)
    }

    /// A new stream from `key`. `received_from` says how many bytes each downloader uploaded to
    /// this peer lately (for reciprocation at a rotation). Counts the stream if admitted: call
    /// [`Choker::finished`] when it ends.
    pub(crate) fn admit(
        &mut self,
        key: &str,
        now: Instant,
        received_from: &dyn Fn(&str) -> u64,
    ) -> Admission {
        self.forget_idle(now);
        if now.duration_since(self.last_rotation) >= ROTATION {
            self.rotate(now, received_from);
        }
        let free = self.unchoked() < self.slots;
        let requester = self.requesters.entry(key.to_string()).or_insert(Requester {
            unchoked: false,
            streams: 0,
            last_seen: now,
            waiting: None,
            served: 0,
        });
        requester.last_seen = now;
        if !requester.unchoked && free {
            requester.unchoked = true;
        }
        if requester.unchoked {
            requester.streams += 1;
            requester.waiting = None;
            Admission::Unchoked
        } else {
            requester.waiting.get_or_insert(now);
            let next = (self.last_rotation + ROTATION).saturating_duration_since(now);
            Admission::Choked(next.max(Duration::from_millis(100)))
        }
    }

    /// A stream of `key` ended after sending `bytes`.
    pub(crate) fn finished(&mut self, key: &str, bytes: u64, now: Instant) {
        if let Some(r) = self.requesters.get_mut(key) {
            r.streams = r.streams.saturating_sub(1);
            r.served += bytes;
            r.last_seen = now;
        }
    }

    fn forget_idle(&mut self, now: Instant) {
        self.requesters
            .retain(|_, r| r.streams > 0 || now.duration_since(r.last_seen) < IDLE);
    }

    /// Recomputes who is unchoked, if anyone is waiting.
    fn rotate(&mut self, now: Instant, received_from: &dyn Fn(&str) -> u64) {
        self.last_rotation = now;
        if !self.requesters.values().any(|r| r.waiting.is_some()) {
            for r in self.requesters.values_mut() {
                r.served = 0;
            }
            return;
        }
        let regular = if self.slots > 1 { self.slots - 1 } else { 1 };
        // (uploaded to us, waiting since (the unchoked: not waiting, last), served lately, key)
        let mut ranked: Vec<(u64, Option<Instant>, u64, String)> = self
            .requesters
            .iter()
            .filter(|(_, r)| r.unchoked || r.waiting.is_some())
            .map(|(key, r)| (received_from(key), r.waiting, r.served, key.clone()))
            .collect();
        // Most uploaded to us first, then waiting longest, then least served lately.
        ranked.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| match (a.1, b.1) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                })
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        let mut chosen: Vec<String> = ranked
            .iter()
            .take(regular)
            .map(|(_, _, _, k)| k.clone())
            .collect();
        if chosen.len() < self.slots {
            let rest = ranked
                .iter()
                .skip(regular)
                .map(|(_, _, _, k)| k.clone())
                .choose_multiple(&mut self.rng, self.slots - chosen.len());
            chosen.extend(rest);
        }
        for (key, r) in self.requesters.iter_mut() {
            r.unchoked = chosen.contains(key);
            if r.unchoked {
                r.waiting = None;
            }
            r.served = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody(_: &str) -> u64 {
        0
    }

    #[test]
    fn slots_are_bounded_and_freed_by_idle_downloaders() {
        let t0 = Instant::now();
        let mut choker = Choker::new(2, t0);
        assert_eq!(choker.admit("a", t0, &nobody), Admission::Unchoked);
        assert_eq!(choker.admit("a", t0, &nobody), Admission::Unchoked);
        assert_eq!(choker.admit("b", t0, &nobody), Admission::Unchoked);
        assert!(matches!(
            choker.admit("c", t0, &nobody),
            Admission::Choked(_)
        ));
        // b finishes and goes quiet: after IDLE its slot is c's.
        choker.finished("b", 10, t0);
        let later = t0 + IDLE;
        assert_eq!(choker.admit("c", later, &nobody), Admission::Unchoked);
        // a still has streams running: never idle.
        assert!(choker.is_unchoked("a"));
    }

    #[test]
    fn a_crowd_is_served_round_robin() {
        let t0 = Instant::now();
        let mut choker = Choker::new(4, t0);
        let crowd: Vec<String> = (0..12).map(|i| format!("d{i}")).collect();
        let mut served = std::collections::BTreeSet::new();
        let mut now = t0;
        // Everyone keeps asking (choked downloaders retry; unchoked ones stream).
        for _ in 0..40 {
            for d in &crowd {
                if choker.admit(d, now, &nobody) == Admission::Unchoked {
                    served.insert(d.clone());
                    choker.finished(d, 1 << 20, now);
                }
            }
            assert!(choker.unchoked() <= 4);
            now += Duration::from_secs(1);
        }
        assert_eq!(served.len(), crowd.len(), "everyone got a turn: {served:?}");
    }

    #[test]
    fn peers_that_upload_back_are_preferred() {
        let t0 = Instant::now();
        let mut choker = Choker::new(3, t0);
        for d in ["greedy1", "greedy2", "greedy3"] {
            assert_eq!(choker.admit(d, t0, &nobody), Admission::Unchoked);
        }
        let generous = |key: &str| if key == "trader" { 1 << 30 } else { 0 };
        assert!(matches!(
            choker.admit("trader", t0, &generous),
            Admission::Choked(_)
        ));
        // A choked downloader keeps asking (every backoff).
        for s in 1..ROTATION.as_secs() {
            let retry = t0 + Duration::from_secs(s);
            assert!(matches!(
                choker.admit("trader", retry, &generous),
                Admission::Choked(_)
            ));
            for d in ["greedy1", "greedy2", "greedy3"] {
                choker.finished(d, 0, retry);
                assert_eq!(choker.admit(d, retry, &generous), Admission::Unchoked);
            }
        }
        let later = t0 + ROTATION;
        for d in ["greedy1", "greedy2", "greedy3"] {
            choker.finished(d, 1 << 20, later);
        }
        assert_eq!(
            choker.admit("trader", later, &generous),
            Admission::Unchoked
        );
        assert_eq!(choker.unchoked(), 3);
    }
}
