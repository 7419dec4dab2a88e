//! Which pieces a holder is asked for next: pure, synchronous piece choice for one download.
//!
//! * **Only what the holder has.** Each connected holder has a [`Bitfield`] (a complete holder's
//!   is full; a partial holder's grows). A holder is only ever asked for pieces it has.
//! * **Rarest first.** Among the pieces a holder has that nobody is fetching, the ones the fewest
//!   connected holders have go first, chosen at random among equals, so a crowd downloading from
//!   one seeder asks it for different pieces and then trades them among itself.
//! * **Large sequential runs.** A choice is a unit of up to `unit_pieces` consecutive pieces,
//!   started at the beginning of a free run or a unit boundary, so requests and messages stay big.
//! * **Endgame.** When every piece the holder has is done or in flight elsewhere, it duplicates
//!   the in-flight unit with the fewest helpers; the first verified copy wins and the download
//!   ends the moment the last piece is verified (the caller cancels the stragglers).
//!
//! Units are handed out on demand, so a fast holder does more than a slow one; and once a
//! holder's rate is known its units are cut to about [`UNIT_TIME`] of one of its streams
//! ([`unit_for_rate`]), so that a slow holder's last units do not hold up the end (with holders
//! at 50 and 400 Mbit/s, a 2 MiB unit takes the slow one's stream 0.7 s, the whole of a 64 MiB
//! download). A unit whose
//! fetch ends (done or failed) is released; its pieces not done become free again.

use crate::chunking::{Bitfield, PieceIndex};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::ops::Range;

/// How long a unit should keep one of its holder's streams busy, once the holder's rate is
/// known: many round trips (so requests stay few next to the data), and short next to a
/// download (so the slowest holder's last unit ends about when the others' do).
pub(crate) const UNIT_TIME: std::time::Duration = std::time::Duration::from_millis(250);

/// The unit, in pieces, for a holder delivering `bytes_per_sec` over `streams` streams: about
/// [`UNIT_TIME`] of one stream's data, at least one piece and at most `max` pieces.
pub(crate) fn unit_for_rate(bytes_per_sec: f64, piece_size: u32, streams: usize, max: u64) -> u64 {
    let per_stream = bytes_per_sec / streams.max(1) as f64;
    let pieces = per_stream * UNIT_TIME.as_secs_f64() / f64::from(piece_size.max(1));
    // `as` saturates (NaN gives 0), so any rate gives a unit within bounds.
    (pieces as u64).clamp(1, max.max(1))
}

/// Identifies a connected holder within one download.
pub(crate) type HolderKey = u64;

/// A unit handed to a holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assignment {
    /// Identifies the assignment for [`Picker::release`].
    pub id: u64,
    /// The pieces to fetch, contiguous, all held by the holder.
    pub pieces: Range<PieceIndex>,
}

/// How much of a unit in flight with another holder (its owner) a holder may duplicate in
/// endgame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Help {
    /// All that is not done: the helper is clearly faster, or the owner is stalled or not
    /// measured yet. The first copy of each piece wins.
    All,
    /// The back half only: the helper is no faster. Taking everything would send the same
    /// bytes twice at the same pace (waste on a shared link); from the back, each does half
    /// and the owner stops where the helper's pieces begin.
    BackHalf,
}

/// What a holder's worker should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Fetch these pieces.
    Fetch(Assignment),
    /// Nothing this holder has is needed now (its pieces are done or in flight elsewhere, or it
    /// has none we lack yet): wait for a change.
    Wait,
    /// Every piece is done.
    Done,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    holder: HolderKey,
    pieces: Range<PieceIndex>,
}

/// Piece choice for one download.
#[derive(Debug)]
pub(crate) struct Picker {
    done: Vec<bool>,
    remaining: u64,
    /// Per piece: how many connected holders have it.
    availability: Vec<u32>,
    /// Per piece: how many assignments in flight cover it.
    fetching: Vec<u32>,
    in_flight: Vec<InFlight>,
    unit_pieces: u64,
    next_id: u64,
    rng: SmallRng,
}

impl Picker {
    /// Picks among the pieces not yet `done`, in units of at most `unit_pieces` pieces; `seed`
    /// makes the random choices repeatable in tests.
    pub(crate) fn new(done: Vec<bool>, unit_pieces: u64, seed: u64) -> Self {
        let pieces = done.len();
        Picker {
            remaining: done.iter().filter(|d| !**d).count() as u64,
            done,
            availability: vec![0; pieces],
            fetching: vec![0; pieces],
            in_flight: Vec::new(),
            unit_pieces: unit_pieces.max(1),
            next_id: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The unit size p2pshare uses: small enough that every holder gets several units (so
    /// dynamic balancing works), large enough that per-request costs vanish (at most 4 MiB).
    pub(crate) fn unit_pieces(piece_count: u64, piece_size: u32, holders: usize) -> u64 {
        let max_by_bytes = ((4u64 << 20) / piece_size.max(1) as u64).max(1);
        (piece_count / (holders.max(1) as u64 * 8)).clamp(1, max_by_bytes)
    }

    /// Pieces in the file.
    pub(crate) fn piece_count(&self) -> u64 {
        self.done.len() as u64
    }

    /// Pieces not yet verified.
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// True once `piece` is verified.
    pub(crate) fn is_done(&self, piece: PieceIndex) -> bool {
        self.done.get(piece as usize).copied().unwrap_or(true)
    }

    /// True while some unit is being fetched.
    pub(crate) fn in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// The verified pieces.
    pub(crate) fn done(&self) -> &[bool] {
        &self.done
    }

    #[cfg(test)]
    /// Pieces not done that no connected holder has: while there are some, the download needs
    /// more holders.
    pub(crate) fn unavailable(&self) -> u64 {
        (0..self.done.len())
            .filter(|&p| !self.done[p] && self.availability[p] == 0)
            .count() as u64
    }

    /// Counts the pieces of a holder that joined.
    pub(crate) fn add_holder(&mut self, has: &Bitfield) {
        let n = self.piece_count();
        for piece in has.iter().take_while(|&p| p < n) {
            self.availability[piece as usize] += 1;
        }
    }

    /// Counts pieces a connected holder gained.
    pub(crate) fn holder_gained(&mut self, pieces: impl IntoIterator<Item = PieceIndex>) {
        for piece in pieces {
            if let Some(count) = self.availability.get_mut(piece as usize) {
                *count += 1;
            }
        }
    }

    /// Forgets the pieces of a holder that left (its assignments must be released too).
    pub(crate) fn remove_holder(&mut self, has: &Bitfield) {
        let n = self.piece_count();
        for piece in has.iter().take_while(|&p| p < n) {
            let count = &mut self.availability[piece as usize];
            *count = count.saturating_sub(1);
        }
    }

    fn free(&self, piece: u64, has: &Bitfield) -> bool {
        !self.done[piece as usize] && self.fetching[piece as usize] == 0 && has.has(piece)
    }

    fn assign(&mut self, holder: HolderKey, pieces: Range<PieceIndex>) -> Next {
        let id = self.next_id;
        self.next_id += 1;
        for piece in pieces.clone() {
            self.fetching[piece as usize] += 1;
        }
        self.in_flight.push(InFlight {
            id,
            holder,
            pieces: pieces.clone(),
        });
        Next::Fetch(Assignment { id, pieces })
    }

    /// The next unit for `holder`, which has the pieces in `has`.
    #[cfg(test)]
    pub(crate) fn next(&mut self, holder: HolderKey, has: &Bitfield) -> Next {
        self.next_up_to(holder, has, u64::MAX, |_| Help::All)
    }

    /// The next unit for `holder`, which has the pieces in `has`, of at most `max_unit` pieces
    /// (and at most the picker's unit). In endgame, `help(owner)` says how much of a unit in
    /// flight with `owner` this holder may duplicate.
    pub(crate) fn next_up_to(
        &mut self,
        holder: HolderKey,
        has: &Bitfield,
        max_unit: u64,
        help: impl Fn(HolderKey) -> Help,
    ) -> Next {
        if self.remaining == 0 {
            return Next::Done;
        }
        let n = self.piece_count();
        let unit = self.unit_pieces.min(max_unit.max(1));
        // Run heads: free pieces that start a free run or a unit boundary, so units stay long.
        let mut rarest = u32::MAX;
        let mut heads: Vec<u64> = Vec::new();
        for piece in 0..n {
            if !self.free(piece, has) {
                continue;
            }
            if piece != 0 && piece % unit != 0 && self.free(piece - 1, has) {
                continue;
            }
            let availability = self.availability[piece as usize];
            if availability < rarest {
                rarest = availability;
                heads.clear();
            }
            if availability == rarest {
                heads.push(piece);
            }
        }
        if !heads.is_empty() {
            let start = heads[self.rng.random_range(0..heads.len())];
            let mut end = start + 1;
            while end < n && end - start < unit && self.free(end, has) {
                end += 1;
            }
            return self.assign(holder, start..end);
        }
        self.endgame(holder, has, unit, help)
    }

    /// Helps with the unit in flight elsewhere that has the fewest helpers, unless this holder
    /// already works on it; only pieces the holder has, at most `unit` of them, and only as
    /// much as `help` says.
    fn endgame(
        &mut self,
        holder: HolderKey,
        has: &Bitfield,
        unit: u64,
        help: impl Fn(HolderKey) -> Help,
    ) -> Next {
        let mut best: Option<(usize, Range<PieceIndex>)> = None;
        for f in &self.in_flight {
            if f.holder == holder {
                continue;
            }
            // The first run of pieces in it that are not done and that this holder has.
            let Some(start) = f
                .pieces
                .clone()
                .find(|&p| !self.done[p as usize] && has.has(p))
            else {
                continue;
            };
            let end = (start..f.pieces.end)
                .find(|&p| self.done[p as usize] || !has.has(p))
                .unwrap_or(f.pieces.end);
            let start = match help(f.holder) {
                Help::All => start,
                // Nothing to split in a single piece: the owner has it nearly in.
                Help::BackHalf if end - start < 2 => continue,
                Help::BackHalf => start + (end - start).div_ceil(2),
            };
            let pieces = start..end.min(start + unit);
            let overlaps =
                |g: &InFlight| g.pieces.start < pieces.end && pieces.start < g.pieces.end;
            if self
                .in_flight
                .iter()
                .any(|g| g.holder == holder && overlaps(g))
            {
                continue;
            }
            let helpers = self.in_flight.iter().filter(|g| overlaps(g)).count();
            if best.as_ref().is_none_or(|(h, _)| helpers < *h) {
                best = Some((helpers, pieces));
            }
        }
        match best {
            Some((_, pieces)) => self.assign(holder, pieces),
            None => Next::Wait,
        }
    }

    /// Records a verified piece. Returns false if it was already done (a duplicate in endgame).
    pub(crate) fn complete(&mut self, piece: PieceIndex) -> bool {
        match self.done.get_mut(piece as usize) {
            Some(slot) if !*slot => {
                *slot = true;
                self.remaining -= 1;
                true
            }
            _ => false,
        }
    }

    /// Ends an assignment, finished or failed: its pieces not done become free again.
    pub(crate) fn release(&mut self, id: u64) {
        let Some(pos) = self.in_flight.iter().position(|f| f.id == id) else {
            return;
        };
        let ended = self.in_flight.swap_remove(pos);
        for piece in ended.pieces {
            self.fetching[piece as usize] -= 1;
        }
    }

    /// Releases every assignment of a holder (it left the download).
    pub(crate) fn release_holder(&mut self, holder: HolderKey) {
        let ids: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|f| f.holder == holder)
            .map(|f| f.id)
            .collect();
        for id in ids {
            self.release(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(next: Next) -> Assignment {
        match next {
            Next::Fetch(a) => a,
            other => panic!("expected a unit, got {other:?}"),
        }
    }

    #[test]
    fn a_holder_is_only_asked_for_what_it_has() {
        let mut picker = Picker::new(vec![false; 8], 4, 1);
        let has = Bitfield::from_flags(&[false, false, true, true, false, true, false, false]);
        picker.add_holder(&has);
        let mut asked = Vec::new();
        while let Next::Fetch(a) = picker.next(7, &has) {
            asked.extend(a.pieces.clone());
            for p in a.pieces {
                picker.complete(p);
            }
            picker.release(a.id);
        }
        asked.sort();
        assert_eq!(asked, vec![2, 3, 5]);
        assert_eq!(picker.next(7, &has), Next::Wait);
        assert_eq!(picker.remaining(), 5);
        assert_eq!(picker.unavailable(), 5);
    }

    #[test]
    fn rarest_pieces_go_first_and_runs_stay_long() {
        let n = 64;
        let mut picker = Picker::new(vec![false; n], 8, 2);
        let seeder = Bitfield::full(n as u64);
        // A partial holder has the first half: those pieces are common, the rest rare.
        let partial = Bitfield::from_flags(&(0..n).map(|p| p < 32).collect::<Vec<_>>());
        picker.add_holder(&seeder);
        picker.add_holder(&partial);
        for _ in 0..4 {
            let a = fetch(picker.next(1, &seeder));
            assert!(a.pieces.start >= 32, "rare half first: {:?}", a.pieces);
            assert_eq!(a.pieces.end - a.pieces.start, 8, "a whole unit");
            assert_eq!(a.pieces.start % 8, 0, "aligned to a unit");
        }
        // The rare half is all in flight: the seeder now gets common pieces.
        let a = fetch(picker.next(1, &seeder));
        assert!(a.pieces.end <= 32);
    }

    #[test]
    fn random_among_equals_spreads_a_crowd() {
        let n = 256u64;
        let seeder = Bitfield::full(n);
        let mut starts = std::collections::BTreeSet::new();
        for seed in 0..16 {
            let mut picker = Picker::new(vec![false; n as usize], 4, seed);
            picker.add_holder(&seeder);
            starts.insert(fetch(picker.next(0, &seeder)).pieces.start);
        }
        assert!(starts.len() >= 8, "16 downloaders began at {starts:?}");
    }

    #[test]
    fn endgame_duplicates_and_release_frees() {
        let mut picker = Picker::new(vec![false; 4], 4, 3);
        let full = Bitfield::full(4);
        picker.add_holder(&full);
        picker.add_holder(&full);
        let a = fetch(picker.next(0, &full));
        assert_eq!(a.pieces, 0..4);
        // Holder 1 duplicates it; holder 0 has nothing new.
        let b = fetch(picker.next(1, &full));
        assert_eq!(b.pieces, 0..4);
        assert_eq!(picker.next(0, &full), Next::Wait);
        assert!(picker.complete(0));
        assert!(!picker.complete(0));
        picker.release_holder(0);
        picker.release(b.id);
        // Free again, minus the done piece.
        assert_eq!(fetch(picker.next(0, &full)).pieces, 1..4);
        for p in 1..4 {
            picker.complete(p);
        }
        assert_eq!(picker.next(0, &full), Next::Done);
    }

    #[test]
    fn availability_follows_holders() {
        let mut picker = Picker::new(vec![false; 3], 1, 4);
        let some = Bitfield::from_flags(&[true, false, false]);
        picker.add_holder(&some);
        assert_eq!(picker.unavailable(), 2);
        picker.holder_gained([1, 2, 99]);
        assert_eq!(picker.unavailable(), 0);
        picker.remove_holder(&some);
        assert_eq!(picker.unavailable(), 1);
    }

    #[test]
    fn unit_sizes_are_bounded() {
        assert_eq!(Picker::unit_pieces(4096, 64 << 10, 1), 64);
        assert_eq!(Picker::unit_pieces(4096, 16 << 20, 1), 1);
        assert_eq!(Picker::unit_pieces(3, 64 << 10, 16), 1);
    }

    /// A slow holder's units last about `UNIT_TIME` per stream; a fast one's stay at the
    /// download's unit; any rate gives a unit within bounds.
    #[test]
    fn units_follow_the_holders_rate() {
        let piece = 256 << 10;
        // 50 Mbit/s over 2 streams: 3.1 MB/s each, 0.78 MB in 250 ms: 2 pieces of 256 KiB.
        assert_eq!(unit_for_rate(6.25e6, piece, 2, 8), 2);
        // 400 Mbit/s: 6.25 MB per stream in 250 ms, more than the unit of 8.
        assert_eq!(unit_for_rate(50e6, piece, 2, 8), 8);
        assert_eq!(unit_for_rate(0.0, piece, 2, 8), 1);
        assert_eq!(unit_for_rate(f64::NAN, piece, 0, 0), 1);
        assert_eq!(unit_for_rate(f64::INFINITY, piece, 2, 8), 8);

        // A unit cut short, and in endgame, help cut short too.
        let mut picker = Picker::new(vec![false; 8], 4, 5);
        let full = Bitfield::full(8);
        picker.add_holder(&full);
        picker.add_holder(&full);
        let first = fetch(picker.next_up_to(0, &full, 1, |_| Help::All));
        assert_eq!(first.pieces.end - first.pieces.start, 1);
        let mut fast = Vec::new();
        while let Next::Fetch(a) = picker.next(1, &full) {
            if a.pieces.contains(&first.pieces.start) {
                // Endgame: holder 1 helps with holder 0's unit.
                assert_eq!(a.pieces, first.pieces);
                break;
            }
            assert!(a.pieces.end - a.pieces.start <= 4);
            fast.push(a);
        }
        let covered: u64 = fast.iter().map(|a| a.pieces.end - a.pieces.start).sum();
        assert_eq!(covered, 7, "the fast holder took the rest: {fast:?}");
    }

    /// In endgame a holder no faster than the owner takes the back half of what is left; a
    /// single piece left is not split.
    #[test]
    fn a_helper_no_faster_takes_the_back_half() {
        let mut picker = Picker::new(vec![false; 8], 8, 6);
        let full = Bitfield::full(8);
        picker.add_holder(&full);
        picker.add_holder(&full);
        let owned = fetch(picker.next(0, &full));
        assert_eq!(owned.pieces, 0..8);
        picker.complete(0);
        picker.complete(1);
        let help = fetch(picker.next_up_to(1, &full, u64::MAX, |_| Help::BackHalf));
        assert_eq!(help.pieces, 5..8, "the back half of 2..8");
        // A third holder, no faster either, takes a back half too.
        let third = fetch(picker.next_up_to(2, &full, u64::MAX, |_| Help::BackHalf));
        assert!(
            third.pieces.start >= 2 && third.pieces.end <= 8,
            "{third:?}"
        );
        for p in 2..7 {
            picker.complete(p);
        }
        picker.release(help.id);
        picker.release(third.id);
        assert_eq!(
            picker.next_up_to(1, &full, u64::MAX, |_| Help::BackHalf),
            Next::Wait
        );
        // A faster one takes it.
        assert_eq!(
            fetch(picker.next_up_to(1, &full, u64::MAX, |_| Help::All)).pieces,
            7..8
        );
    }
}
