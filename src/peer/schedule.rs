//! Which holder fetches which pieces: pure, synchronous scheduling decisions.
//!
//! Pieces are handed out in **units** (runs of contiguous pieces) on demand: a holder's worker
//! asks for the next unit when it has finished one, so a fast holder does more than a slow one
//! and no static split lets the slowest set the pace. When the queue is empty, idle holders
//! duplicate units still in flight elsewhere (endgame), so one slow or dying holder cannot hold
//! up the end; the first verified copy of a piece wins. A unit whose fetch fails goes back to the
//! front of the queue, minus the pieces already done.

use crate::chunking::PieceIndex;
use std::collections::VecDeque;
use std::ops::Range;

/// Index of a holder within one download.
pub(crate) type HolderIndex = usize;

/// A unit handed to a holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assignment {
    /// Identifies the assignment for [`Scheduler::release`].
    pub id: u64,
    /// The pieces to fetch, contiguous.
    pub pieces: Range<PieceIndex>,
}

/// What a worker should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Fetch these pieces.
    Fetch(Assignment),
    /// Nothing to do now, but pieces are in flight elsewhere and may come back: wait for a change.
    Wait,
    /// Every piece is done.
    Done,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    holder: HolderIndex,
    pieces: Range<PieceIndex>,
}

/// Scheduling state of one download.
#[derive(Debug)]
pub(crate) struct Scheduler {
    done: Vec<bool>,
    remaining: u64,
    queue: VecDeque<Range<PieceIndex>>,
    in_flight: Vec<InFlight>,
    next_id: u64,
}

impl Scheduler {
    /// Schedules the pieces not yet `done`, in units of at most `unit_pieces` pieces.
    pub(crate) fn new(done: Vec<bool>, unit_pieces: u64) -> Self {
        let unit_pieces = unit_pieces.max(1);
        let mut queue = VecDeque::new();
        let mut start = None;
        for (i, &d) in done.iter().chain(std::iter::once(&true)).enumerate() {
            let i = i as u64;
            match (start, d) {
                (None, false) => start = Some(i),
                (Some(s), true) => {
                    let mut s: u64 = s;
                    while s < i {
                        let e = (s + unit_pieces).min(i);
                        queue.push_back(s..e);
                        s = e;
                    }
                    start = None;
                }
                _ => {}
            }
        }
        Scheduler {
            remaining: done.iter().filter(|d| !**d).count() as u64,
            done,
            queue,
            in_flight: Vec::new(),
            next_id: 0,
        }
    }

    /// The unit size p2pshare uses: small enough that every holder gets several units (so
    /// dynamic balancing works), large enough that per-request costs vanish (at most 4 MiB).
    pub(crate) fn unit_pieces(piece_count: u64, piece_size: u32, holders: usize) -> u64 {
        let max_by_bytes = ((4u64 << 20) / piece_size as u64).max(1);
        (piece_count / (holders.max(1) as u64 * 8)).clamp(1, max_by_bytes)
    }

    /// Pieces not yet verified.
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// True once piece `piece` is verified.
    pub(crate) fn is_done(&self, piece: PieceIndex) -> bool {
        self.done[piece as usize]
    }

    /// Trims a range to its first and last pieces that are not done.
    fn trim(&self, pieces: &Range<PieceIndex>) -> Option<Range<PieceIndex>> {
        let start = pieces.clone().find(|&p| !self.is_done(p))?;
        let end = pieces.clone().rev().find(|&p| !self.is_done(p))? + 1;
        Some(start..end)
    }

    fn assign(&mut self, holder: HolderIndex, pieces: Range<PieceIndex>) -> Next {
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.push(InFlight {
            id,
            holder,
            pieces: pieces.clone(),
        });
        Next::Fetch(Assignment { id, pieces })
    }

    /// The next unit for `holder`.
    pub(crate) fn next(&mut self, holder: HolderIndex) -> Next {
        if self.remaining == 0 {
            return Next::Done;
        }
        while let Some(unit) = self.queue.pop_front() {
            if let Some(pieces) = self.trim(&unit) {
                return self.assign(holder, pieces);
            }
        }
        // Endgame: help with the unit in flight elsewhere that has the fewest helpers, unless
        // this holder already works on it.
        let mut best: Option<(usize, Range<PieceIndex>)> = None;
        for f in &self.in_flight {
            if f.holder == holder {
                continue;
            }
            let Some(pieces) = self.trim(&f.pieces) else {
                continue;
            };
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
        let slot = &mut self.done[piece as usize];
        if *slot {
            return false;
        }
        *slot = true;
        self.remaining -= 1;
        true
    }

    /// Ends an assignment, finished or failed. Pieces of it not done and not in flight elsewhere
    /// go back to the front of the queue.
    pub(crate) fn release(&mut self, id: u64) {
        let Some(pos) = self.in_flight.iter().position(|f| f.id == id) else {
            return;
        };
        let ended = self.in_flight.swap_remove(pos);
        let mut run_start = None;
        let mut runs = Vec::new();
        for p in ended
            .pieces
            .clone()
            .chain(std::iter::once(ended.pieces.end))
        {
            let pending = p < ended.pieces.end
                && !self.is_done(p)
                && !self.in_flight.iter().any(|f| f.pieces.contains(&p));
            match (run_start, pending) {
                (None, true) => run_start = Some(p),
                (Some(s), false) => {
                    runs.push(s..p);
                    run_start = None;
                }
                _ => {}
            }
        }
        for run in runs.into_iter().rev() {
            self.queue.push_front(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(s: &mut Scheduler, holder: HolderIndex) -> Assignment {
        match s.next(holder) {
            Next::Fetch(a) => a,
            other => panic!("expected a unit, got {other:?}"),
        }
    }

    #[test]
    fn units_cover_only_missing_pieces() {
        let mut done = vec![false; 10];
        done[3] = true;
        done[4] = true;
        let mut s = Scheduler::new(done, 2);
        let mut got = Vec::new();
        while let Next::Fetch(a) = s.next(0) {
            if got.iter().any(|g: &Range<u64>| g.start == a.pieces.start) {
                break;
            }
            got.push(a.pieces.clone());
            for p in a.pieces.clone() {
                s.complete(p);
            }
            s.release(a.id);
        }
        assert_eq!(got, vec![0..2, 2..3, 5..7, 7..9, 9..10]);
        assert_eq!(s.next(0), Next::Done);
    }

    #[test]
    fn a_fast_holder_takes_more_units_than_a_slow_one() {
        let mut s = Scheduler::new(vec![false; 20], 1);
        let slow = fetch(&mut s, 1);
        let mut fast_units = 0;
        while let Next::Fetch(a) = s.next(0) {
            if a.pieces == slow.pieces {
                break; // endgame: the fast holder helps with the slow one's unit
            }
            fast_units += 1;
            s.complete(a.pieces.start);
            s.release(a.id);
        }
        assert_eq!(fast_units, 19);
        assert!(s.complete(slow.pieces.start));
        assert!(
            !s.complete(slow.pieces.start),
            "a duplicate completion is reported"
        );
        assert_eq!(s.next(1), Next::Done);
    }

    #[test]
    fn a_failed_units_missing_pieces_go_back_first() {
        let mut s = Scheduler::new(vec![false; 8], 4);
        let a = fetch(&mut s, 0);
        assert_eq!(a.pieces, 0..4);
        s.complete(0);
        s.complete(2);
        s.release(a.id);
        let b = fetch(&mut s, 1);
        assert_eq!(b.pieces, 1..2);
        let c = fetch(&mut s, 1);
        assert_eq!(c.pieces, 3..4);
        let d = fetch(&mut s, 1);
        assert_eq!(d.pieces, 4..8);
        // Nothing queued; holder 0 helps with the least helped unit, never its own.
        let e = fetch(&mut s, 0);
        assert!([1..2, 3..4, 4..8].contains(&e.pieces));
        assert_eq!(s.remaining(), 6);
    }

    #[test]
    fn a_holder_with_nothing_to_help_waits() {
        let mut s = Scheduler::new(vec![false; 1], 4);
        let a = fetch(&mut s, 0);
        assert_eq!(s.next(0), Next::Wait);
        let dup = fetch(&mut s, 1);
        assert_eq!(dup.pieces, a.pieces);
        assert_eq!(s.next(1), Next::Wait);
        // Holder 0 failed; the piece is still in flight at holder 1, so it is not queued again,
        // but a third holder may help with it.
        s.release(a.id);
        let again = fetch(&mut s, 2);
        assert_eq!(again.pieces, 0..1);
        s.release(dup.id);
        s.release(again.id);
        // Nothing in flight any more: the piece is queued for whoever asks.
        assert_eq!(fetch(&mut s, 0).pieces, 0..1);
    }

    #[test]
    fn unit_size_is_bounded() {
        assert_eq!(Scheduler::unit_pieces(4096, 256 * 1024, 3), 16);
        assert_eq!(Scheduler::unit_pieces(10, 64 * 1024, 3), 1);
        assert_eq!(Scheduler::unit_pieces(1000, 16 << 20, 1), 1);
    }
}
