//! What a server allows its clients' connections ([`ServerLimits`]), and the command-line flags
//! both binaries use to set it ([`ConnectionFlags`]).

use std::time::Duration;

/// Default [`ServerLimits::max_connections_per_address`]. One peer opens a connection per
/// download per holder (nothing is pooled across downloads), so a peer running a hundred
/// downloads from one holder needs about a hundred: the cap leaves room for that and for a few
/// peers behind one NAT address, while one address still gets only a share of the process cap.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// Default [`ServerLimits::idle_timeout`]: above a peer's heartbeat interval (10 s by default), so
/// the connections peers keep to their tracker stay open.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`ServerLimits::client_stall_timeout`]: the Peer service's stream idle timeout.
pub const DEFAULT_CLIENT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections [`default_max_connections`] ever allows (a process given a huge open-file
/// limit still keeps its connection memory bounded).
const MAX_DEFAULT_CONNECTIONS: usize = 16_384;
/// Fewest connections [`default_max_connections`] allows, whatever the open-file limit says.
const MIN_DEFAULT_CONNECTIONS: usize = 16;

/// Limits a server applies to every connection it accepts. See the module documentation of
/// [`crate::grpc`].
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Calls (HTTP/2 streams) one connection may have open at once: the per-client cap. More
    /// wait on the client side until one ends. The downloader opens 2 streams per holder, and
    /// each download its own connection, so 32 is far above what one download uses; it caps
    /// clients that open many streams on one connection.
    pub max_streams_per_connection: u32,
    /// How long a call may take to deliver its request and have its handler answer (for a
    /// server-streaming call: until the stream starts; the stream itself is not cut).
    pub request_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings, so dead clients are noticed even when no call runs.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Connections open at once, all clients together. At the cap the server stops accepting
    /// (new connections wait in the kernel's backlog) until one closes. Default:
    /// [`default_max_connections`].
    pub max_connections: usize,
    /// Connections open at once from one IP address. Past it a new connection from that
    /// address is closed as soon as it is accepted.
    pub max_connections_per_address: usize,
    /// A connection with no call in flight for this long is closed (keepalive pings, which a
    /// live client answers, do not count as activity).
    pub idle_timeout: Duration,
    /// A connection is closed when its client has taken nothing of a response for this long
    /// (HTTP/2 flow control: it sends no WINDOW_UPDATE). Closing the connection is what frees
    /// the data already buffered for it: hyper offers a server no way to reset one stream whose
    /// send window is zero (see `connections`).
    pub client_stall_timeout: Duration,
    /// Where the server counts its calls, connections and refusals (and a peer its bytes and
    /// downloads): see [`crate::metrics`]. None (the default): nothing is counted.
    pub metrics: Option<crate::metrics::Metrics>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_streams_per_connection: 32,
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_connections: default_max_connections(),
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            client_stall_timeout: DEFAULT_CLIENT_STALL_TIMEOUT,
            metrics: None,
        }
    }
}

/// The default cap on a server's connections: three quarters of the process's open-file limit
/// (`ulimit -n`, the soft limit), between 16 and 16,384. The quarter left over is for the files
/// a peer serves and writes, its own client connections, and the runtime; so the server stops
/// accepting before `accept` fails with EMFILE.
pub fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let three_quarters = limit.map_or(MAX_DEFAULT_CONNECTIONS as u64, |n| n / 4 * 3);
    usize::try_from(three_quarters)
        .unwrap_or(usize::MAX)
        .clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS)
}

/// The connection limits as command-line flags, shared by the `tracker` and `peer` binaries
/// (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionFlags {
    /// Connections served at once, all clients together; at the cap new connections wait
    /// (default: three quarters of the open-file limit, `ulimit -n`, at most 16384).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: Option<u64>,
    /// Connections served at once from one IP address; more from it are closed at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections_per_address: u64,
    /// Seconds a connection may stay open with no call in flight (the tracker raises it to three
    /// heartbeat intervals if shorter).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_connection_timeout: u64,
    /// Seconds a client may leave a response unread (sending no HTTP/2 flow-control update)
    /// before its connection is closed and what was buffered for it freed.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_CLIENT_STALL_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub client_stall_timeout: u64,
}

impl ConnectionFlags {
    /// The server limits these flags ask for (the others at their defaults).
    pub fn limits(&self) -> ServerLimits {
        let defaults = ServerLimits::default();
        ServerLimits {
            max_connections: self
                .max_connections
                .map_or(defaults.max_connections, saturating_usize),
            max_connections_per_address: saturating_usize(self.max_connections_per_address),
            idle_timeout: Duration::from_secs(self.idle_connection_timeout),
            client_stall_timeout: Duration::from_secs(self.client_stall_timeout),
            ..defaults
        }
    }
}

fn saturating_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: ConnectionFlags,
    }

    #[test]
    fn the_default_connection_cap_follows_the_open_file_limit() {
        let cap = default_max_connections();
        assert!((MIN_DEFAULT_CONNECTIONS..=MAX_DEFAULT_CONNECTIONS).contains(&cap));
        if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            assert!(
                cap as u64 <= limit.max(MIN_DEFAULT_CONNECTIONS as u64),
                "{cap} {limit}"
            );
        }
    }

    #[test]
    fn flags_give_limits_and_defaults_match_server_limits() {
        let defaults = Cli::parse_from(["x"]).flags.limits();
        let expected = ServerLimits::default();
        assert_eq!(defaults.max_connections, expected.max_connections);
        assert_eq!(
            defaults.max_connections_per_address,
            expected.max_connections_per_address
        );
        assert_eq!(defaults.idle_timeout, expected.idle_timeout);
        assert_eq!(defaults.client_stall_timeout, expected.client_stall_timeout);
        let set = Cli::parse_from([
            "x",
            "--max-connections",
            "7",
            "--max-connections-per-address",
            "3",
            "--idle-connection-timeout",
            "5",
            "--client-stall-timeout",
            "2",
        ])
        .flags
        .limits();
        assert_eq!(
            (set.max_connections, set.max_connections_per_address),
            (7, 3)
        );
        assert_eq!(set.idle_timeout, Duration::from_secs(5));
        assert_eq!(set.client_stall_timeout, Duration::from_secs(2));
        assert!(Cli::try_parse_from(["x", "--max-connections", "0"]).is_err());
    }
}
