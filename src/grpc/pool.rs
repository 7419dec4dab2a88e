//! A pool of client channels shared by a peer's downloads, so that many small downloads from one
//! holder pay one TCP (and TLS, and HTTP/2) handshake between them instead of one each.
//!
//! * **One channel per (address, client security).** A tonic [`Channel`](tonic::transport::Channel)
//!   is one HTTP/2 connection that multiplexes calls, so every download from a holder shares it.
//!   The key holds the address as dialled and digests of the swarm key and of the trusted CA:
//!   a channel is never handed to a caller that would present other credentials.
//! * **Bounded.** At most `max_channels` entries. When full, the entry idle the longest is
//!   dropped; if every entry is in use, the caller gets a channel of its own that the pool does
//!   not keep (a download never waits for the pool).
//! * **Idle expiry.** An entry no download has used for about `idle_expiry` is dropped by
//!   [`ChannelPool::sweep`] (a node runs it periodically, see [`ChannelPool::sweep_until`]). The
//!   default, [`DEFAULT_IDLE_EXPIRY`], is well under a server's idle timeout
//!   ([`super::DEFAULT_IDLE_TIMEOUT`]), so the client lets go of a connection before the server
//!   closes it and a call rarely races the server's GOAWAY.
//! * **Failures.** A caller that saw the connection fail (a transport error or no answer in
//!   time) says so through its [`Lease`] ([`Lease::connection_failed`]); the entry is dropped,
//!   so the next caller dials afresh. Callers still holding the failed channel keep it (tonic
//!   redials a channel whose connection broke on its next call).
//! * **Closing.** [`ChannelPool::close`] drops every entry and makes the pool hand out only
//!   channels it does not keep: a node that shuts down closes its idle connections at once (a
//!   connection closes when the last clone of its channel is dropped, so a cancelled download
//!   closes the rest as it lets go).
//!
//! Dropping an entry never breaks a call in flight: it only means the pool stops handing the
//! channel out.

use super::{ClientChannel, ClientSecurity};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most channels a pool keeps (each is one connection, so one file descriptor, when connected).
pub(crate) const DEFAULT_MAX_CHANNELS: usize = 256;
/// An entry unused for about this long is dropped. Under the default server idle timeout
/// ([`super::DEFAULT_IDLE_TIMEOUT`], 60 s) so that the client is the one that lets go.
pub(crate) const DEFAULT_IDLE_EXPIRY: Duration = Duration::from_secs(20);

/// What identifies a channel: where it goes and what it presents.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// `host:port` as dialled.
    address: String,
    /// BLAKE3 digest of the swarm key sent on every call (the key itself is not kept here).
    swarm_key: Option<[u8; 32]>,
    /// BLAKE3 digest of the PEM of the CA trusted for TLS; `None` for plaintext.
    tls_ca: Option<[u8; 32]>,
}

impl Key {
    fn new(address: &str, security: &ClientSecurity) -> Self {
        Key {
            address: address.to_string(),
            swarm_key: security.swarm_key.as_ref().map(|k| *k.digest().as_bytes()),
            tls_ca: security
                .tls_ca
                .as_ref()
                .map(|ca| *blake3::hash(ca.certificate().get_ref()).as_bytes()),
        }
    }
}

/// A pooled channel. Its `slot` is shared with every [`Lease`] handed out for it: more than one
/// strong reference means a caller holds it.
#[derive(Debug)]
struct Entry {
    channel: ClientChannel,
    slot: Arc<Slot>,
    /// When it was last handed out or last seen in use by a sweep.
    last_used: Instant,
}

impl Entry {
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.slot) > 1
    }
}

/// The identity of one pooled channel, shared by its entry and the leases handed out for it.
#[derive(Debug)]
struct Slot {
    key: Key,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Key, Entry>,
    /// Set by [`ChannelPool::close`]: nothing is kept from then on.
    closed: bool,
    /// Channels created for callers (pooled or not), since the pool was made.
    dialled: u64,
}

#[derive(Debug)]
struct Shared {
    entries: Mutex<Entries>,
    max_channels: usize,
    idle_expiry: Duration,
}

/// Client channels shared by the downloads of one node, keyed by address and client security.
/// Cheap to clone (clones share the pool).
#[derive(Debug, Clone)]
pub(crate) struct ChannelPool {
    shared: Arc<Shared>,
}

impl Default for ChannelPool {
    fn default() -> Self {
        ChannelPool::new(DEFAULT_MAX_CHANNELS, DEFAULT_IDLE_EXPIRY)
    }
}

/// A caller's hold on a pooled channel: while any clone of it lives, the entry counts as in use
/// (it does not expire and is not dropped to make room). Also how a caller reports that the
/// connection failed.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    slot: Arc<Slot>,
    /// Empty for a channel the pool does not keep.
    pool: Weak<Shared>,
}

impl Lease {
    /// The connection failed (a transport error, or no answer in time): the pool stops handing
    /// this channel out, so the next caller dials afresh. Idempotent; a no-op once the entry
    /// was replaced.
    pub(crate) fn connection_failed(&self) {
        let Some(shared) = self.pool.upgrade() else {
            return;
        };
        let mut entries = lock(&shared);
        let same = entries
            .map
            .get(&self.slot.key)
            .is_some_and(|e| Arc::ptr_eq(&e.slot, &self.slot));
        if same {
            entries.map.remove(&self.slot.key);
            tracing::debug!(address = %self.slot.key.address, "pooled channel dropped after a failure");
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Entries> {
    shared.entries.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChannelPool {
    /// A pool keeping at most `max_channels` channels (at least one), each dropped once unused
    /// for about `idle_expiry`.
    pub(crate) fn new(max_channels: usize, idle_expiry: Duration) -> Self {
        ChannelPool {
            shared: Arc::new(Shared {
                entries: Mutex::new(Entries::default()),
                max_channels: max_channels.max(1),
                idle_expiry,
            }),
        }
    }

    /// The channel to `address` (`host:port`) for a caller presenting `security`: the pooled one
    /// if there is one, else a new lazily connecting one (pooled if there is room). Errors only
    /// for an address that cannot be dialled at all.
    pub(crate) fn channel(
        &self,
        address: &str,
        security: &ClientSecurity,
    ) -> Result<(ClientChannel, Lease), tonic::transport::Error> {
        let key = Key::new(address, security);
        let now = Instant::now();
        if let Some(found) = self.pooled(&key, now) {
            return Ok(found);
        }
        // Built outside the lock: parsing the address and a TLS configuration takes a while.
        let channel = security.channel(address)?;
        let slot = Arc::new(Slot { key });
        let mut entries = lock(&self.shared);
        if let Some(entry) = entries.map.get_mut(&slot.key) {
            // Another caller pooled one meanwhile: share it, drop ours (never connected).
            entry.last_used = now;
            return Ok((entry.channel.clone(), self.lease(&entry.slot)));
        }
        entries.dialled += 1;
        tracing::debug!(
            address,
            pooled = entries.map.len(),
            dialled = entries.dialled,
            "new channel"
        );
        if entries.closed || !self.make_room(&mut entries, now) {
            drop(entries);
            let lease = Lease {
                slot,
                pool: Weak::new(),
            };
            return Ok((channel, lease));
        }
        entries.map.insert(
            slot.key.clone(),
            Entry {
                channel: channel.clone(),
                slot: slot.clone(),
                last_used: now,
            },
        );
        Ok((channel, self.lease(&slot)))
    }

    fn pooled(&self, key: &Key, now: Instant) -> Option<(ClientChannel, Lease)> {
        let mut entries = lock(&self.shared);
        let entry = entries.map.get_mut(key)?;
        entry.last_used = now;
        Some((entry.channel.clone(), self.lease(&entry.slot)))
    }

    fn lease(&self, slot: &Arc<Slot>) -> Lease {
        Lease {
            slot: slot.clone(),
            pool: Arc::downgrade(&self.shared),
        }
    }

    /// Makes room for one more entry: expired entries go, then the one idle the longest.
    /// False if every entry is in use.
    fn make_room(&self, entries: &mut Entries, now: Instant) -> bool {
        if entries.map.len() < self.shared.max_channels {
            return true;
        }
        self.expire(entries, now);
        if entries.map.len() < self.shared.max_channels {
            return true;
        }
        let oldest = entries
            .map
            .iter()
            .filter(|(_, e)| !e.in_use())
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(key) => {
                entries.map.remove(&key);
                true
            }
            None => false,
        }
    }

    /// Drops the entries unused for the idle expiry; entries in use are marked used now.
    fn expire(&self, entries: &mut Entries, now: Instant) {
        let idle_expiry = self.shared.idle_expiry;
        entries.map.retain(|_, entry| {
            if entry.in_use() {
                entry.last_used = now;
                return true;
            }
            now.saturating_duration_since(entry.last_used) < idle_expiry
        });
    }

    /// Drops the entries no caller has used for the idle expiry, as of `now`. An entry in use
    /// counts as used now, so it expires about the idle expiry after its last user let go
    /// (give or take the time between sweeps).
    pub(crate) fn sweep(&self, now: Instant) {
        let mut entries = lock(&self.shared);
        self.expire(&mut entries, now);
    }

    /// Sweeps every quarter of the idle expiry until `cancel` fires, then closes the pool.
    pub(crate) async fn sweep_until(self, cancel: CancellationToken) {
        let period = (self.shared.idle_expiry / 4).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => self.sweep(Instant::now()),
            }
        }
        self.close();
    }

    /// Drops every entry and keeps none from now on: idle connections close at once, the others
    /// when their callers let go.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut entries = lock(&self.shared);
            entries.closed = true;
            std::mem::take(&mut entries.map)
        };
        // The channels are dropped outside the lock.
        drop(dropped);
    }

    /// How many channels the pool keeps now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.shared).map.len()
    }

    /// True if the pool keeps no channel.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many channels were created for callers since the pool was made (pooled or not): each
    /// is one connection once used.
    #[cfg(test)]
    pub(crate) fn dialled(&self) -> u64 {
        lock(&self.shared).dialled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::SwarmKey;

    fn key(k: &str) -> ClientSecurity {
        ClientSecurity {
            swarm_key: Some(SwarmKey::new(k).unwrap()),
            tls_ca: None,
        }
    }

    #[tokio::test]
    async fn one_channel_per_address_and_security() {
        let pool = ChannelPool::default();
        let plain = ClientSecurity::default();
        let (_a, lease_a) = pool.channel("127.0.0.1:1", &plain).unwrap();
        let (_b, lease_b) = pool.channel("127.0.0.1:1", &plain).unwrap();
        assert!(Arc::ptr_eq(&lease_a.slot, &lease_b.slot), "reused");
        assert_eq!((pool.len(), pool.dialled()), (1, 1));
        // Another address, another swarm key, or a key where there was none: another channel.
        let (_c, lease_c) = pool.channel("127.0.0.1:2", &plain).unwrap();
        let (_d, lease_d) = pool.channel("127.0.0.1:1", &key("one")).unwrap();
        let (_e, lease_e) = pool.channel("127.0.0.1:1", &key("two")).unwrap();
        let (_f, lease_f) = pool.channel("127.0.0.1:1", &key("one")).unwrap();
        assert_eq!((pool.len(), pool.dialled()), (4, 4));
        for other in [&lease_c, &lease_d, &lease_e] {
            assert!(!Arc::ptr_eq(&lease_a.slot, &other.slot));
        }
        assert!(!Arc::ptr_eq(&lease_d.slot, &lease_e.slot));
        assert!(Arc::ptr_eq(&lease_d.slot, &lease_f.slot));
        // An address that cannot be dialled is an error, and nothing is kept.
        assert!(pool.channel("not an address", &plain).is_err());
        assert_eq!(pool.len(), 4);
    }

    #[tokio::test]
    async fn idle_channels_expire_and_channels_in_use_do_not() {
        let expiry = Duration::from_secs(20);
        let pool = ChannelPool::new(8, expiry);
        let plain = ClientSecurity::default();
        let t0 = Instant::now();
        let (held, lease) = pool.channel("127.0.0.1:1", &plain).unwrap();
        drop(pool.channel("127.0.0.1:2", &plain).unwrap());
        pool.sweep(t0 + expiry / 2);
        assert_eq!(pool.len(), 2);
        // Past the expiry: the unused one goes; the one in use stays, counted as used now.
        pool.sweep(t0 + expiry * 2);
        assert_eq!(pool.len(), 1);
        drop((held, lease));
        pool.sweep(t0 + expiry * 2 + expiry / 2);
        assert_eq!(pool.len(), 1, "idle for half the expiry only");
        pool.sweep(t0 + expiry * 3);
        assert!(pool.is_empty());
        // Dialled afresh.
        drop(pool.channel("127.0.0.1:1", &plain).unwrap());
        assert_eq!((pool.len(), pool.dialled()), (1, 3));
    }

    #[tokio::test]
    async fn the_pool_is_bounded() {
        let pool = ChannelPool::new(3, DEFAULT_IDLE_EXPIRY);
        let plain = ClientSecurity::default();
        let held: Vec<_> = (1..=3)
            .map(|port| pool.channel(&format!("127.0.0.1:{port}"), &plain).unwrap())
            .collect();
        // Full and all in use: the caller gets a channel the pool does not keep.
        let (_extra, extra) = pool.channel("127.0.0.1:4", &plain).unwrap();
        assert_eq!(pool.len(), 3);
        assert!(extra.pool.upgrade().is_none());
        let (_again, again) = pool.channel("127.0.0.1:4", &plain).unwrap();
        assert!(!Arc::ptr_eq(&extra.slot, &again.slot));
        // One let go: it makes room (the longest idle goes first).
        let mut held = held;
        held.remove(1);
        let (_fifth, fifth) = pool.channel("127.0.0.1:5", &plain).unwrap();
        assert!(fifth.pool.upgrade().is_some());
        assert_eq!(pool.len(), 3);
        let (_, two) = pool.channel("127.0.0.1:2", &plain).unwrap();
        assert_eq!(pool.dialled(), 7, "port 2 was dropped for port 5: {two:?}");
    }

    #[tokio::test]
    async fn a_failed_channel_is_dialled_afresh_and_close_keeps_nothing() {
        let pool = ChannelPool::default();
        let plain = ClientSecurity::default();
        let (_a, first) = pool.channel("127.0.0.1:1", &plain).unwrap();
        let (_b, second) = pool.channel("127.0.0.1:1", &plain).unwrap();
        first.connection_failed();
        assert!(pool.is_empty());
        let (_c, fresh) = pool.channel("127.0.0.1:1", &plain).unwrap();
        assert!(!Arc::ptr_eq(&fresh.slot, &first.slot));
        // A late report about the old channel leaves the new one alone.
        second.connection_failed();
        assert_eq!((pool.len(), pool.dialled()), (1, 2));

        pool.close();
        assert!(pool.is_empty());
        let (_d, after) = pool.channel("127.0.0.1:1", &plain).unwrap();
        assert!(after.pool.upgrade().is_none());
        assert!(pool.is_empty());
    }
}
