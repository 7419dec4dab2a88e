//! What the Peer service allows: concurrent streams (all together and per client address), the
//! upload rate shared by all of them, and what its server allows each connection.

use super::{DEFAULT_MAX_STREAMS, DEFAULT_MAX_STREAMS_PER_ADDRESS, MAX_BLOCKS_PER_MESSAGE};
use crate::chunking::BLOCK_SIZE;
use crate::pb::peer as pb;
use governor::{DefaultDirectRateLimiter, Quota};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

/// The limiter counts in cells of this many bytes: whole bytes would need a replenish period
/// under a nanosecond past 1 GB/s, which governor cannot express.
const CELL_BYTES: u64 = 1024;
/// Budget that may be saved up while idle, as time at the full rate (at least one message).
const BURST: Duration = Duration::from_millis(20);

/// Shares an upload budget (bytes per second) among all of a peer's streams. Streams wait for
/// budget asynchronously (governor's GCRA), so a waiting stream still ends at once on shutdown.
pub struct RateLimiter {
    bytes_per_sec: u64,
    /// Cells the limiter may hand out at once: any one message fits.
    burst: NonZeroU32,
    limiter: DefaultDirectRateLimiter,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("bytes_per_sec", &self.bytes_per_sec)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter at `bytes_per_sec`.
    pub fn new(bytes_per_sec: u64) -> Self {
        let bytes_per_sec = bytes_per_sec.max(1);
        let per_cell = Duration::from_secs_f64(CELL_BYTES as f64 / bytes_per_sec as f64)
            .max(Duration::from_nanos(1));
        // A message is up to MAX_BLOCKS_PER_MESSAGE blocks; a burst smaller than that could never
        // be granted (governor answers InsufficientCapacity).
        let message_cells = MAX_BLOCKS_PER_MESSAGE * BLOCK_SIZE as u64 / CELL_BYTES;
        let saved_cells = (bytes_per_sec as f64 * BURST.as_secs_f64() / CELL_BYTES as f64) as u64;
        let burst = u32::try_from(message_cells.max(saved_cells))
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MAX);
        let quota = Quota::with_period(per_cell)
            .expect("the period is at least a nanosecond")
            .allow_burst(burst);
        RateLimiter {
            bytes_per_sec,
            burst,
            limiter: DefaultDirectRateLimiter::direct(quota),
        }
    }

    /// Waits until `bytes` may be sent, and takes them from the budget.
    pub(super) async fn wait(&self, bytes: usize) {
        let cells = (bytes as u64).div_ceil(CELL_BYTES).max(1);
        let cells = u32::try_from(cells)
            .ok()
            .and_then(NonZeroU32::new)
            .map_or(self.burst, |c| c.min(self.burst));
        // Never InsufficientCapacity: `cells` is at most the burst.
        let _ = self.limiter.until_n_ready(cells).await;
    }
}

/// Limits of the Peer service.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Concurrent `GetBlocks` streams.
    pub max_streams: usize,
    /// Concurrent `GetBlocks` streams from one IP address, so that one client (however many
    /// connections and peer ids it uses) cannot take every stream slot. Meant to be below
    /// `max_streams`; whichever is lower applies.
    pub max_streams_per_address: usize,
    /// Upload budget shared by all streams, if any.
    pub upload_rate: Option<Arc<RateLimiter>>,
    /// Downloaders served at once (the others are choked until a rotation; see
    /// [`crate::peer::choke`]).
    pub upload_slots: usize,
    /// What the peer's server allows each connection, and how many (see [`crate::grpc`]).
    pub connections: crate::grpc::ServerLimits,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_streams: DEFAULT_MAX_STREAMS,
            max_streams_per_address: DEFAULT_MAX_STREAMS_PER_ADDRESS,
            upload_rate: None,
            upload_slots: crate::peer::choke::DEFAULT_UPLOAD_SLOTS,
            connections: crate::grpc::ServerLimits::default(),
        }
    }
}

impl ServeLimits {
    /// The peer's metrics, if its server has any (`connections.metrics`).
    pub(crate) fn peer_metrics(&self) -> Option<Arc<crate::metrics::PeerMetrics>> {
        self.connections.metrics.as_ref()?.peer().cloned()
    }
}

/// Counts the streams served to each client IP address against a cap.
#[derive(Debug)]
pub(super) struct AddressStreams {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressStreams {
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(AddressStreams {
            cap: cap.max(1),
            open: Mutex::default(),
        })
    }

    /// The cap.
    pub(super) fn cap(&self) -> usize {
        self.cap
    }

    /// A stream slot for `ip`, unless it has `cap` streams already.
    pub(super) fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressStream> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressStream {
            owner: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

/// One stream's place in its address's share, given back when dropped.
#[derive(Debug)]
pub(super) struct AddressStream {
    owner: Arc<AddressStreams>,
    ip: IpAddr,
}

impl Drop for AddressStream {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A `GetBlocks` response stream holding its place in its client address's share: given back at
/// the stream's end (when its last item is taken) or when hyper drops the stream (the client
/// reset it, or its connection closed), never while the client still has data to take.
pub(super) struct AddressCounted {
    inner: ReceiverStream<Result<pb::GetBlocksResponse, Status>>,
    slot: Option<AddressStream>,
}

impl AddressCounted {
    pub(super) fn new(
        inner: ReceiverStream<Result<pb::GetBlocksResponse, Status>>,
        slot: Option<AddressStream>,
    ) -> Self {
        AddressCounted { inner, slot }
    }
}

impl Stream for AddressCounted {
    type Item = Result<pb::GetBlocksResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            // The end (a failed stream ends with its status): a client that saw it may open
            // another stream at once.
            this.slot = None;
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Sends `messages` messages of `bytes` through `limiter` and returns the time taken.
    async fn time_to_send(limiter: &RateLimiter, messages: usize, bytes: usize) -> Duration {
        let started = Instant::now();
        for _ in 0..messages {
            limiter.wait(bytes).await;
        }
        started.elapsed()
    }

    #[tokio::test]
    async fn the_rate_is_honoured_for_full_and_odd_sized_messages() {
        // 4 MiB/s: 16 messages of 256 KiB is 4 MiB, one second minus the burst saved at start.
        let limiter = RateLimiter::new(4 << 20);
        let took = time_to_send(&limiter, 16, 256 << 10).await;
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        // A message of any size, even above the burst, is granted (capped), never refused.
        let limiter = RateLimiter::new(1 << 20);
        let took = time_to_send(&limiter, 3, 100).await;
        assert!(took < Duration::from_millis(100), "{took:?}");
        limiter.wait(usize::MAX).await;
    }

    #[test]
    fn each_address_has_its_own_share_of_streams() {
        let streams = AddressStreams::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = streams.try_take(a).unwrap();
        let second = streams.try_take(a).unwrap();
        assert!(streams.try_take(a).is_none());
        let other = streams.try_take(b).unwrap();
        drop(first);
        assert_eq!(streams.open(a), 1);
        let third = streams.try_take(a).unwrap();
        drop((second, third, other));
        assert_eq!((streams.open(a), streams.open(b)), (0, 0));
        assert!(
            streams.open.lock().unwrap().is_empty(),
            "no entry kept for nothing"
        );
    }

    #[test]
    fn extreme_rates_make_valid_limiters() {
        for rate in [0, 1, 1000, u32::MAX as u64, u64::MAX] {
            let limiter = RateLimiter::new(rate);
            assert!(limiter.burst.get() >= 256, "{rate}: {limiter:?}");
        }
    }
}
