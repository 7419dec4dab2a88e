//! A connected holder within a transfer, and how fast it delivers: what sizes its units and
//! decides, in endgame, how much of another holder's unit it may duplicate.

use crate::chunking::Bitfield;
use crate::peer::download::picker::{unit_for_rate, Help};
use crate::peer::download::STREAMS_PER_HOLDER;
use std::time::{Duration, Instant};

/// How long a holder's rate is measured before its units are sized by it.
const RATE_AFTER: Duration = Duration::from_millis(100);
/// The most bytes of a unit handed to a holder that has delivered nothing yet (or the download's
/// unit, if smaller). Its first units decide how long the slowest holder keeps the download
/// waiting at the end: with the download's unit (up to 4 MiB a stream), a 50 Mbit/s holder
/// among faster ones held its first two units for most of a 64 MiB download (0.87x of the caps;
/// 0.91x with this); at this size they take about 0.17 s there. Only the first units are this
/// small: once a piece came in, and until the rate is measured, a holder gets the download's
/// unit, so a fast holder far away does not pay a round trip per 512 KiB while it is measured.
const FIRST_UNIT_BYTES: u64 = 512 << 10;
/// A holder that delivered no piece for this long is helped in endgame whatever the rates (a
/// pulled cable, a holder gone quiet).
const STALLED_AFTER: Duration = Duration::from_millis(500);
/// In endgame a holder duplicates all of another's unit only if it is this much faster;
/// otherwise it takes the back half (see [`Help`]).
const FASTER: f64 = 1.25;

/// A connected holder.
pub(super) struct Session {
    pub(super) peer_id: String,
    pub(super) has: Bitfield,
    /// When its first verified piece came in (its rate is measured from there, so connecting
    /// and the first request do not count).
    first_piece: Option<Instant>,
    /// Bytes of the verified pieces it delivered after the first.
    bytes_since: u64,
    /// When it last delivered a verified piece (or joined, before its first).
    last_piece: Instant,
}

impl Session {
    /// A holder that just joined, with the pieces in `has`.
    pub(super) fn new(peer_id: &str, has: Bitfield) -> Session {
        Session {
            peer_id: peer_id.to_string(),
            has,
            first_piece: None,
            bytes_since: 0,
            last_piece: Instant::now(),
        }
    }

    /// Records a verified piece of `len` bytes it delivered at `now`.
    pub(super) fn delivered(&mut self, len: u64, now: Instant) {
        self.last_piece = now;
        match self.first_piece {
            None => self.first_piece = Some(now),
            Some(_) => self.bytes_since += len,
        }
    }

    /// Its rate in bytes per second, once measured over [`RATE_AFTER`].
    fn rate(&self, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.first_piece?);
        (elapsed >= RATE_AFTER && self.bytes_since > 0)
            .then(|| self.bytes_since as f64 / elapsed.as_secs_f64())
    }

    /// The most pieces its next unit should have (see [`unit_for_rate`]): [`FIRST_UNIT_BYTES`]
    /// (at least one piece) before its first piece, then no limit until its rate is known.
    pub(super) fn unit(&self, now: Instant, piece_size: u32) -> u64 {
        match self.rate(now) {
            Some(rate) => unit_for_rate(rate, piece_size, STREAMS_PER_HOLDER, u64::MAX),
            None if self.first_piece.is_none() => {
                (FIRST_UNIT_BYTES / u64::from(piece_size.max(1))).max(1)
            }
            None => u64::MAX,
        }
    }

    /// How much of a unit in flight with `owner` this holder may duplicate in endgame: all of
    /// it if the owner is gone, stalled or not measured, or this holder is clearly faster;
    /// else the back half.
    pub(super) fn help(&self, owner: Option<&Session>, now: Instant) -> Help {
        let Some(owner) = owner else {
            return Help::All;
        };
        if now.saturating_duration_since(owner.last_piece) >= STALLED_AFTER {
            return Help::All;
        }
        match (self.rate(now), owner.rate(now)) {
            (Some(mine), Some(theirs)) if mine < theirs * FASTER => Help::BackHalf,
            _ => Help::All,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A holder that delivered `bytes` after its first piece over `secs`, last at `now`.
    fn measured(bytes: u64, secs: f64, now: Instant) -> Session {
        let mut s = Session::new("h", Bitfield::full(1));
        s.delivered(0, now - Duration::from_secs_f64(secs));
        s.delivered(bytes, now);
        s
    }

    #[test]
    fn units_and_help_follow_the_measured_rates() {
        let now = Instant::now() + Duration::from_secs(10);
        let piece = 256 << 10;
        let fresh = Session::new("new", Bitfield::full(1));
        // Nothing delivered yet: 512 KiB, at least one piece; then no limit until measured.
        assert_eq!(fresh.unit(now, piece), 2);
        assert_eq!(fresh.unit(now, 64 << 10), 8);
        assert_eq!(fresh.unit(now, 16 << 20), 1);
        let mut started = Session::new("started", Bitfield::full(1));
        started.delivered(piece.into(), now);
        assert_eq!(
            started.unit(now, piece),
            u64::MAX,
            "delivered, not measured yet"
        );
        let slow = measured(6_000_000, 1.0, now);
        let fast = measured(48_000_000, 1.0, now);
        let peer = measured(50_000_000, 1.0, now);
        // 6 MB/s over 2 streams: 0.75 MB in 250 ms, 2 pieces; the fast one 6 MB, 22.
        assert_eq!(slow.unit(now, piece), 2);
        assert_eq!(fast.unit(now, piece), 22);
        // Clearly faster, or an owner not measured, gone or stalled: all of it.
        assert_eq!(fast.help(Some(&slow), now), Help::All);
        assert_eq!(fast.help(Some(&fresh), now), Help::All);
        assert_eq!(fast.help(None, now), Help::All);
        assert_eq!(slow.help(Some(&fast), now + STALLED_AFTER), Help::All);
        // No faster: the back half.
        assert_eq!(fast.help(Some(&peer), now), Help::BackHalf);
        assert_eq!(slow.help(Some(&fast), now), Help::BackHalf);
    }
}
