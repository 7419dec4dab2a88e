//! The switching policy among a peer's trackers, pure (no network, no clock): which tracker a
//! call tries in which order, how long each attempt may take, when to look back at the trackers
//! earlier in the list, and which lists are accepted.
//!
//! The policy, in short:
//! - The peer is registered with one tracker, the *current* one (the first of the list at
//!   start). Heartbeats, announcements, withdrawals and `Leave` go there.
//! - A call that gets no answer from the current tracker (no answer within its deadline, or a
//!   connection failure: UNAVAILABLE) moves on to the next tracker of the list (round the end to
//!   the start); a refusal (RESOURCE_EXHAUSTED, PERMISSION_DENIED, ...) is an answer and moves
//!   nothing. Queries try the trackers that answered last before those that did not.
//! - The tracker that answers a heartbeat becomes the current one; the session token is tried
//!   there first (trackers sharing a store accept it), and a NOT_FOUND there means registering
//!   with the full catalog.
//! - Coming back: the peer stays on a tracker that answers. Every [`RETURN_AFTER_BEATS`]
//!   heartbeats on a tracker other than the first, it asks the trackers before it (in list
//!   order) whether they answer again, and moves to the first that does and takes it. So peers
//!   gather again on the first tracker once it is back (independent trackers only list the peers
//!   registered with them), without flapping on every answer.

use super::TrackerLinkError;
use std::time::Duration;

/// Most trackers one peer knows: a failover round tries each at most once, so the list bounds
/// how long a round can take (and [`FAILOVER_TIMEOUT`] bounds it in time).
pub const MAX_TRACKERS: usize = 16;

/// Deadline of one call across all the trackers it tries (each attempt also has its own
/// deadline: [`super::CALL_TIMEOUT`], or [`super::PROBE_TIMEOUT`] for a tracker known down).
/// Room for one full call deadline and five probes.
pub(crate) const FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Heartbeats on a tracker other than the first before the trackers earlier in the list are
/// asked again.
pub(crate) const RETURN_AFTER_BEATS: u32 = 4;

/// The order in which a call tries the trackers: the current one first when `current_first`
/// (calls about the registration) or when it answered last, then the others from the one after
/// it round to the one before it, those that answered last before those that did not.
///
/// `answered[i]` is whether tracker `i` answered its last call; `current < answered.len()`.
pub(crate) fn try_order(current: usize, answered: &[bool], current_first: bool) -> Vec<usize> {
    let n = answered.len();
    let ring = (0..n).map(|k| (current + k) % n);
    let (mut up, down): (Vec<usize>, Vec<usize>) = ring.partition(|&i| answered[i]);
    if current_first && !answered[current] {
        up.insert(0, current);
        up.extend(down.into_iter().filter(|&i| i != current));
    } else {
        up.extend(down);
    }
    up
}

/// The deadline of one attempt: the tracker's own (`own`), cut to what is `left` of the whole
/// call's; `None` once nothing is left (the call stops there).
pub(crate) fn attempt_deadline(own: Duration, left: Duration) -> Option<Duration> {
    (!left.is_zero()).then(|| own.min(left))
}

/// Whether the trackers before `current` should be asked again, after `beats` heartbeats on it.
pub(crate) fn return_due(current: usize, beats: u32) -> bool {
    current > 0 && beats >= RETURN_AFTER_BEATS
}

/// The tracker list a peer runs with: `first`, then `more` in order, a repeated address merged
/// into its first occurrence (and returned, to be told); at most [`MAX_TRACKERS`].
pub(crate) fn tracker_list(
    first: &str,
    more: &[String],
) -> Result<(Vec<String>, Vec<String>), TrackerLinkError> {
    let mut list: Vec<String> = Vec::new();
    let mut merged = Vec::new();
    for address in std::iter::once(first).chain(more.iter().map(String::as_str)) {
        if list.iter().any(|a| a == address) {
            merged.push(address.to_string());
        } else {
            list.push(address.to_string());
        }
    }
    if list.len() > MAX_TRACKERS {
        return Err(TrackerLinkError::TooManyTrackers { given: list.len() });
    }
    Ok((list, merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_try_the_current_tracker_then_the_next_round_the_list() {
        let all = [true; 4];
        assert_eq!(try_order(0, &all, true), [0, 1, 2, 3]);
        assert_eq!(try_order(2, &all, true), [2, 3, 0, 1]);
        assert_eq!(try_order(2, &all, false), [2, 3, 0, 1]);
        assert_eq!(try_order(0, &[true], true), [0]);
    }

    #[test]
    fn trackers_known_down_are_tried_last_but_the_registration_asks_its_own_first() {
        let answered = [false, true, false, true];
        // A query: those that answered first (in ring order from the current), then the rest.
        assert_eq!(try_order(0, &answered, false), [1, 3, 0, 2]);
        assert_eq!(try_order(2, &answered, false), [3, 1, 2, 0]);
        // A heartbeat: the tracker it is registered with first, even if it is down (it may be
        // back), then the others as a query orders them.
        assert_eq!(try_order(0, &answered, true), [0, 1, 3, 2]);
        assert_eq!(try_order(2, &answered, true), [2, 3, 1, 0]);
        // Nobody answered: ring order.
        assert_eq!(try_order(1, &[false; 3], false), [1, 2, 0]);
        assert_eq!(try_order(1, &[false; 3], true), [1, 2, 0]);
        // Every tracker exactly once, whatever the state.
        for current in 0..5 {
            for mask in 0u32..32 {
                let answered: Vec<bool> = (0..5).map(|i| mask & (1 << i) != 0).collect();
                for first in [false, true] {
                    let mut order = try_order(current, &answered, first);
                    if first || answered[current] {
                        assert_eq!(order[0], current);
                    }
                    order.sort_unstable();
                    assert_eq!(order, [0, 1, 2, 3, 4]);
                }
            }
        }
    }

    #[test]
    fn an_attempt_gets_its_own_deadline_within_what_is_left() {
        let s = Duration::from_secs;
        assert_eq!(attempt_deadline(s(5), s(10)), Some(s(5)));
        assert_eq!(attempt_deadline(s(1), s(10)), Some(s(1)));
        assert_eq!(attempt_deadline(s(5), s(2)), Some(s(2)));
        assert_eq!(attempt_deadline(s(5), Duration::ZERO), None);
        // One full call deadline and five probes fit in a round; the round stays bounded.
        assert!(super::super::CALL_TIMEOUT + 5 * super::super::PROBE_TIMEOUT <= FAILOVER_TIMEOUT);
    }

    #[test]
    fn the_first_trackers_are_asked_again_after_a_few_beats_elsewhere() {
        assert!(!return_due(0, 1000), "already on the first");
        assert!(!return_due(1, RETURN_AFTER_BEATS - 1));
        assert!(return_due(1, RETURN_AFTER_BEATS));
        assert!(return_due(3, RETURN_AFTER_BEATS + 1));
    }

    #[test]
    fn tracker_lists_are_bounded_and_repeats_merged() {
        let more = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (list, merged) = tracker_list("a:1", &more(&["b:1", "a:1", "c:1", "b:1"])).unwrap();
        assert_eq!(list, ["a:1", "b:1", "c:1"]);
        assert_eq!(merged, ["a:1", "b:1"]);
        let (list, merged) = tracker_list("a:1", &[]).unwrap();
        assert_eq!((list, merged.len()), (vec!["a:1".to_string()], 0));

        let many: Vec<String> = (1..MAX_TRACKERS).map(|i| format!("t{i}:1")).collect();
        assert_eq!(tracker_list("t0:1", &many).unwrap().0.len(), MAX_TRACKERS);
        let too_many: Vec<String> = (1..=MAX_TRACKERS).map(|i| format!("t{i}:1")).collect();
        let error = tracker_list("t0:1", &too_many).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("too many trackers: 17 given, at most {MAX_TRACKERS}")
        );
        // Repeats do not count against the bound.
        let repeated = vec!["t0:1".to_string(); 100];
        assert_eq!(tracker_list("t0:1", &repeated).unwrap().0.len(), 1);
    }
}
