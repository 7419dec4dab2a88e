//! gRPC plumbing shared by the tracker and the peer: serving with reflection and health on a bound
//! listener, and client channels tuned for bulk streaming.
//!
//! # Limits every server applies (hostile clients)
//!
//! * **Request message size**: per service, 64 KiB for the Peer service, 4 MiB for the Tracker.
//!   Past it: RESOURCE_EXHAUSTED ([`ClearLimits`]), decided on the length prefix before the body
//!   is read.
//! * **Calls in flight on one connection** (the per-client cap):
//!   [`ServerLimits::max_streams_per_connection`]. Past it the client's HTTP/2 layer waits for a
//!   slot (a client ignoring the setting has its extra streams refused), so one connection never
//!   holds more than this share of a peer's `GetBlocks` streams.
//! * **Time to send the request and get the call started**: [`ServerLimits::request_timeout`].
//!   Past it: CANCELLED, so a client that opens calls and trickles (or never finishes) their
//!   requests holds nothing for long.
//! * **Dead or silent connections**: HTTP/2 keepalive pings every
//!   [`ServerLimits::keepalive_interval`], answer due within [`ServerLimits::keepalive_timeout`];
//!   then the connection is closed and its calls end.
//! * **Idle connections**: a connection with no call in flight for
//!   [`ServerLimits::idle_timeout`] is closed (answered keepalive pings do not keep it open).
//! * **Unread responses**: a connection whose client takes nothing of a response for
//!   [`ServerLimits::client_stall_timeout`] (it sends no flow-control update) is closed, which is
//!   what frees the data buffered for it: hyper cannot end one stream whose send window is zero.
//! * **Connections**: at most [`ServerLimits::max_connections`] at once (then the server stops
//!   accepting until one closes; the default follows the open-file limit, so `accept` does not
//!   run out of descriptors first), at most [`ServerLimits::max_connections_per_address`] from
//!   one IP address (more are closed as soon as they are accepted). Accept errors such as EMFILE
//!   are retried after a backoff (100 ms doubling to 1 s), never in a busy loop, and serving
//!   resumes by itself when descriptors free up.
//! * **Header block size**: 16 KiB (hyper's default); past it the stream is refused.
//! * **Compressed requests**: not accepted (UNIMPLEMENTED): no decompression bombs.
//!
//! What a streaming call may hold once it runs is the service's business: the Peer service caps
//! its `GetBlocks` streams, all together and per client address, and ends one whose client stops
//! reading (see [`crate::peer::server`]).
//!
//! # Private swarms (both optional, off by default)
//!
//! * **Swarm key** ([`SwarmKey`]): a shared secret every client sends as the gRPC metadata
//!   [`SWARM_KEY_HEADER`] on every call. A server given a key ([`ServerSecurity::swarm_key`])
//!   answers any call without it, or with another key, UNAUTHENTICATED before the call reaches a
//!   service. The comparison is over BLAKE3 digests of the keys (constant-time equality), so its
//!   time says nothing about how much of a guess was right, nor about the key's length.
//!   **Health is exempt**: `grpc.health.v1.Health` stays open so orchestrators and load balancers
//!   can probe a private server without the secret (it says only "serving"); reflection and the
//!   p2pshare services are protected.
//! * **TLS** (rustls through tonic): a server given a certificate and key
//!   ([`ServerSecurity::tls`]) accepts only TLS connections; a client given a CA
//!   ([`ClientSecurity::tls_ca`]) connects with TLS and accepts only a server certificate that CA
//!   signed, for the host it dialled (peers and trackers are dialled by IP address, so their
//!   certificates need IP subject alternative names). A plaintext client of a TLS server, or a TLS
//!   client of a plaintext server, fails at once with a transport error (UNAVAILABLE), and the TLS
//!   handshake itself has a deadline ([`TLS_HANDSHAKE_TIMEOUT`]) on both sides.
//!
//! The key is the membership check; TLS adds confidentiality and protects the key (sent in every
//! call's headers) from anyone on the path. A key without TLS keeps strangers out of a LAN swarm
//! but is readable by anyone who can sniff the LAN.
//!
//! # Where things are
//!
//! * `server`: serving routes with reflection and health on a bound listener ([`serve_with`],
//!   [`serve_with_security`]).
//! * `limits`: [`ServerLimits`] and the command-line flags that set them ([`ConnectionFlags`]).
//! * `connections`: the accept loop, the caps on connections, and closing idle or stalled ones.
//! * `pool`: the channels a peer's downloads share, one per (address, client security), bounded
//!   and expiring when idle (`ChannelPool`).
//! * `client`: lazily connecting channels tuned for bulk streaming ([`channel`],
//!   [`ClientSecurity::channel`]) and what a failed connection means
//!   ([`ClientSecurity::explain_connection_failure`]).
//! * `security`: the swarm key, TLS identities and trusted CAs, and what each side demands or
//!   presents ([`ServerSecurity`], [`ClientSecurity`]).
//! * `middleware`: the swarm-key check on the server and its sender on the client, and
//!   [`ClearLimits`].

mod client;
mod connections;
mod limits;
mod middleware;
mod pool;
mod rope;
mod security;
mod server;

pub use client::{channel, ClientChannel};
pub(crate) use client::{error_chain, is_connection_failure};
pub use limits::{
    default_max_connections, ConnectionFlags, ServerLimits, DEFAULT_CLIENT_STALL_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
};
pub use middleware::{ClearLimits, SwarmKeyInterceptor};
pub(crate) use pool::{ChannelPool, Lease};
pub(crate) use rope::Rope;
pub(crate) use security::TLS_HANDSHAKE_TIMEOUT;
pub use security::{
    ClientSecurity, SecurityError, ServerSecurity, SwarmKey, TlsIdentity, TrustedCa,
};
pub(crate) use server::FILE_DESCRIPTOR_SET;
pub use server::{serve_with, serve_with_security, ServiceKind};

/// HTTP/2 frame size both sides accept: 1 MiB frames move bulk data with far fewer frames (and
/// syscalls) than the 16 KiB default; measured ~2x on loopback streaming.
pub(crate) const MAX_FRAME_SIZE: u32 = 1 << 20;
/// Largest gRPC message accepted, either way. A `GetBlocks` message carries at most
/// [`crate::peer::server::MAX_BLOCKS_PER_MESSAGE`] blocks, far below this.
pub const MAX_MESSAGE_SIZE: usize = 4 << 20;
