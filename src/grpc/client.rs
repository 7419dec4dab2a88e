//! Client channels: lazily connecting, tuned for bulk streaming, with TLS and the swarm key as
//! a [`ClientSecurity`] says; and, when a call fails, whether it was the connection and why.

use super::middleware::SwarmKeyInterceptor;
use super::security::TrustedCa;
use super::{ClientSecurity, MAX_FRAME_SIZE, TLS_HANDSHAKE_TIMEOUT};
use std::time::Duration;
use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// How long a client waits for a TCP connection before giving up on a host.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 receive window of one stream on a client: how much a holder may send on one
/// `GetBlocks` stream before the client has read it. A stream moves at most window / RTT, and
/// hyper's default (2 MiB) capped one holder's two streams at about 4 MiB per round trip: 80-110
/// MB/s at +20 ms, where plain TCP on the same path gave 135. 8 MiB holds a whole unit (at most
/// 4 MiB) with room for the next request's data, so the window is not what a stream waits for
/// up to about 400 MB/s at 20 ms.
pub(crate) const STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 receive window of a whole client connection (one per holder): what every stream to
/// one holder together may have unread. Two streams' worth (`STREAMS_PER_HOLDER`). It is also
/// the most a holder can make a downloader buffer when the downloader stops reading (its writer
/// is slow): 16 MiB per holder, at most `--max-holders` holders.
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;
/// Environment variable that picks the client's HTTP/2 windows, for measurements: unset or
/// `fixed` gives [`STREAM_WINDOW`] and [`CONNECTION_WINDOW`]; `adaptive`, hyper's adaptive
/// window (grown from 64 KiB by BDP pings, to 16 MiB at most); `hyper`, hyper's defaults (2 MiB
/// per stream, 5 MiB per connection: what p2pshare used before).
pub(crate) const WINDOW_ENV: &str = "P2PSHARE_HTTP2_WINDOW";

/// How a client's HTTP/2 receive windows are set (see [`WINDOW_ENV`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Windows {
    /// [`STREAM_WINDOW`] and [`CONNECTION_WINDOW`].
    Fixed,
    /// hyper's adaptive (BDP-estimating) window.
    Adaptive,
    /// hyper's defaults.
    Hyper,
}

impl Windows {
    /// The choice [`WINDOW_ENV`] makes (read once per process); [`Windows::Fixed`] when unset
    /// or not understood.
    pub(crate) fn from_env() -> Windows {
        static CHOSEN: std::sync::OnceLock<Windows> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| Windows::parse(std::env::var(WINDOW_ENV).ok().as_deref()))
    }

    fn parse(value: Option<&str>) -> Windows {
        match value.map(str::trim) {
            Some("adaptive") => Windows::Adaptive,
            Some("hyper") => Windows::Hyper,
            _ => Windows::Fixed,
        }
    }

    fn apply(self, endpoint: Endpoint) -> Endpoint {
        match self {
            Windows::Fixed => endpoint
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW),
            Windows::Adaptive => endpoint.http2_adaptive_window(true),
            Windows::Hyper => endpoint,
        }
    }
}

/// A lazily connecting plaintext channel to `address` (`host:port`), tuned for bulk streaming,
/// sending no swarm key. For a private swarm use [`ClientSecurity::channel`].
pub fn channel(address: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(address, None)?.connect_lazy())
}

/// The endpoint every channel is built from: frame size, flow-control windows (see
/// [`STREAM_WINDOW`]), keepalive, timeouts, and TLS trusting `tls_ca` when given.
pub(super) fn endpoint(
    address: &str,
    tls_ca: Option<&TrustedCa>,
) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if tls_ca.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_SIZE)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    endpoint = Windows::from_env().apply(endpoint);
    if let Some(ca) = tls_ca {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(ca.certificate())
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        // The name checked against the certificate is the host dialled; an IPv6 literal is
        // written in brackets in an address but not in a certificate.
        let host = endpoint.uri().host().unwrap_or_default();
        if let Some(ipv6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            tls = tls.domain_name(ipv6);
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint)
}

/// The channel type of every client a peer makes: a [`Channel`] that adds the swarm key (if any)
/// to each call.
pub type ClientChannel = InterceptedService<Channel, SwarmKeyInterceptor>;

impl ClientSecurity {
    /// A lazily connecting channel to `address` (`host:port`), tuned like [`channel`], with TLS
    /// and the swarm key as configured.
    pub fn channel(&self, address: &str) -> Result<ClientChannel, tonic::transport::Error> {
        let channel = endpoint(address, self.tls_ca.as_ref())?.connect_lazy();
        Ok(InterceptedService::new(
            channel,
            SwarmKeyInterceptor::new(self.swarm_key.as_ref()),
        ))
    }

    /// If `status` (a call's outcome) is a failure to connect rather than the server's answer,
    /// what failed, in words, with a hint when it looks like a TLS mismatch: a plaintext client
    /// of a TLS server, a TLS client of a plaintext server, or a certificate this client does not
    /// trust. `None` for a server's answer.
    ///
    /// The TLS hints name the likely cause, so they come only when TLS is configured or a
    /// handshake failed (see `Symptom`): a host that refuses, does not answer, cannot be
    /// reached or resolved is a network problem, whatever the swarm's security.
    pub fn explain_connection_failure(&self, status: &Status) -> Option<String> {
        if !is_connection_failure(status) {
            return None;
        }
        let mut detail = status.message().to_string();
        if let Some(source) = std::error::Error::source(status) {
            let chain = error_chain(source);
            if !detail.contains(&chain) {
                detail = if detail.is_empty() || chain.contains(&detail) {
                    chain
                } else {
                    format!("{detail}: {chain}")
                };
            }
        }
        let hint = match (Symptom::of(&detail), self.tls_ca.is_some()) {
            (Symptom::Certificate, _) => Some(
                "TLS: the server's certificate was rejected; it must be signed by the CA given \
                 with --tls-ca and name the address dialled (an IP SAN for an IP address)",
            ),
            (Symptom::NotTls, true) => {
                Some("TLS: the server did not answer with TLS; is it a plaintext server?")
            }
            (Symptom::NotTls | Symptom::HungUp, false) => Some(
                "if the server uses TLS, give the swarm's CA with --tls-ca (a TLS peer also \
                 needs --tls-cert and --tls-key)",
            ),
            _ => None,
        };
        // The chain can quote the server (a certificate's names, a protocol error's text).
        let detail = crate::names::shown(&detail);
        Some(match hint {
            Some(hint) => format!("{detail}; {hint}"),
            None => detail.into_owned(),
        })
    }
}

/// True if `status` (a call's outcome) is a failure of the connection (a transport error, or
/// UNAVAILABLE) rather than the server's answer.
pub(crate) fn is_connection_failure(status: &Status) -> bool {
    status.code() == Code::Unavailable
        || std::iter::successors(
            std::error::Error::source(status),
            |e: &&(dyn std::error::Error + 'static)| e.source(),
        )
        .any(|e| e.is::<tonic::transport::Error>())
}

/// What a failed connection looks like, from the words of its error chain (tonic, hyper, h2,
/// rustls and the OS give no structured cause that survives into a `Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Symptom {
    /// No connection was made: refused, timed out, unreachable, or a name that does not
    /// resolve. The network's problem (or a server that is down), never a TLS mismatch.
    Network,
    /// The server's certificate was rejected.
    Certificate,
    /// A handshake failed: for a TLS client, the server does not speak TLS.
    NotTls,
    /// The connection was made, then the server hung up or sent what is not HTTP/2: what a
    /// plaintext client of a TLS server sees (the server's TLS alert, then the end).
    HungUp,
    /// Anything else.
    Other,
}

impl Symptom {
    /// Classifies an error chain (as `explain_connection_failure` builds it).
    pub(crate) fn of(detail: &str) -> Symptom {
        let lower = detail.to_ascii_lowercase();
        let says = |words: &[&str]| words.iter().any(|w| lower.contains(w));
        if says(&[
            "tcp connect error",
            "dns error",
            "connection refused",
            "timed out",
            "deadline has elapsed",
            "network unreachable",
            "network is unreachable",
            "no route to host",
            "host unreachable",
            "failed to lookup address",
        ]) {
            Symptom::Network
        } else if says(&["certificate"]) {
            Symptom::Certificate
        } else if says(&["corrupt message", "handshake"]) {
            Symptom::NotTls
        } else if says(&[
            "broken pipe",
            "connection reset",
            "connection closed",
            "connection error",
            "frame",
            "protocol error",
            "unexpected eof",
        ]) {
            Symptom::HungUp
        } else {
            Symptom::Other
        }
    }
}

/// An error with its causes, `outer: inner: innermost` (tonic's transport errors say little at
/// the top).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Reads the first frames an HTTP/2 endpoint sends on `io` (after the client preface, if
    /// `preface`) until its SETTINGS and its connection WINDOW_UPDATE are in: the stream and
    /// connection receive windows it advertises. Bounded: 5 s, 64 frames.
    pub(in crate::grpc) async fn advertised_windows(
        io: &mut tokio::net::TcpStream,
        preface: bool,
    ) -> (u32, u32) {
        const DEFAULT_WINDOW: u32 = 65_535;
        let read = async {
            if preface {
                let mut magic = [0u8; 24];
                io.read_exact(&mut magic).await.unwrap();
                assert_eq!(&magic, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            }
            let (mut stream, mut connection, mut settings_seen) =
                (DEFAULT_WINDOW, DEFAULT_WINDOW, false);
            for _ in 0..64 {
                let mut header = [0u8; 9];
                io.read_exact(&mut header).await.unwrap();
                let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let (kind, flags) = (header[3], header[4]);
                let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
                let mut payload = vec![0u8; len];
                io.read_exact(&mut payload).await.unwrap();
                match kind {
                    // SETTINGS (not its ACK): SETTINGS_INITIAL_WINDOW_SIZE is id 4.
                    4 if flags & 1 == 0 => {
                        for entry in payload.chunks_exact(6) {
                            if u16::from_be_bytes([entry[0], entry[1]]) == 4 {
                                stream =
                                    u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                            }
                        }
                        settings_seen = true;
                    }
                    // WINDOW_UPDATE on the connection.
                    8 if stream_id == 0 => {
                        let increment =
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        connection += increment & 0x7fff_ffff;
                        if settings_seen {
                            return (stream, connection);
                        }
                    }
                    _ => {}
                }
            }
            panic!("no SETTINGS and connection WINDOW_UPDATE in 64 frames");
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the endpoint's first frames within 5 s")
    }

    #[test]
    fn window_choice_from_the_environment() {
        assert_eq!(Windows::parse(None), Windows::Fixed);
        assert_eq!(Windows::parse(Some("fixed")), Windows::Fixed);
        assert_eq!(Windows::parse(Some("adaptive")), Windows::Adaptive);
        assert_eq!(Windows::parse(Some(" hyper ")), Windows::Hyper);
        assert_eq!(Windows::parse(Some("huge")), Windows::Fixed);
        // A whole unit (at most 4 MiB) fits a stream's window; every stream to a holder fits
        // the connection's.
        const {
            assert!(STREAM_WINDOW >= 4 << 20);
            assert!(
                CONNECTION_WINDOW as u64
                    >= STREAM_WINDOW as u64 * crate::peer::download::STREAMS_PER_HOLDER as u64
            );
        }
    }

    /// What a client channel tells the server in its first frames: the windows above, so a
    /// holder can keep a whole unit in flight per stream.
    #[tokio::test]
    async fn client_channels_advertise_the_windows() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let call = tokio::spawn(async move {
            let mut health =
                tonic_health::pb::health_client::HealthClient::new(channel(&address).unwrap());
            // No answer ever comes: the test reads the client's frames and drops it.
            let _ = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
        });
        let (mut io, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the client connects within 5 s")
            .unwrap();
        let expected = match Windows::from_env() {
            Windows::Fixed => (STREAM_WINDOW, CONNECTION_WINDOW),
            // Started at the protocol's default, grown as pings measure the path.
            Windows::Adaptive => (65_535, 65_535),
            Windows::Hyper => (2 << 20, 5 << 20),
        };
        assert_eq!(advertised_windows(&mut io, true).await, expected);
        call.abort();
    }

    #[test]
    fn server_answers_are_not_connection_failures() {
        let client = ClientSecurity::default();
        assert!(client
            .explain_connection_failure(&Status::unauthenticated("wrong swarm key"))
            .is_none());
        assert!(client
            .explain_connection_failure(&Status::not_found("no such file"))
            .is_none());
        let refused = client
            .explain_connection_failure(&Status::unavailable(
                "tcp connect error: Connection refused",
            ))
            .unwrap();
        assert!(
            !refused.contains("TLS"),
            "a server that is down is not a TLS problem: {refused}"
        );
    }

    /// The error chains seen on loopback (tonic 0.14, hyper-util 0.1, rustls), and what each
    /// means.
    #[test]
    fn only_handshake_failures_and_tls_clients_get_tls_hints() {
        use Symptom::*;
        for (detail, symptom) in [
            // Nothing listens.
            (
                "transport error: tcp connect error: Connection refused (os error 111)",
                Network,
            ),
            // A listener whose backlog is full: the SYN is dropped, the connect timeout fires.
            (
                "transport error: tcp connect error: deadline has elapsed",
                Network,
            ),
            (
                "transport error: dns error: failed to lookup address information: Name or \
              service not known",
                Network,
            ),
            (
                "transport error: tcp connect error: No route to host (os error 113)",
                Network,
            ),
            // A plaintext client of a TLS server.
            (
                "transport error: connection error: stream closed because of a broken pipe",
                HungUp,
            ),
            (
                "transport error: operation was canceled: connection closed",
                HungUp,
            ),
            (
                "transport error: invalid peer certificate: UnknownIssuer",
                Certificate,
            ),
            (
                "transport error: received corrupt message of type InvalidContentType",
                NotTls,
            ),
            ("transport error: something new", Other),
        ] {
            assert_eq!(Symptom::of(detail), symptom, "{detail}");
        }
        let plaintext = ClientSecurity::default();
        for (message, hint) in [
            ("tcp connect error: deadline has elapsed", false),
            ("dns error: failed to lookup address information", false),
            ("tcp connect error: Connection refused", false),
            (
                "connection error: stream closed because of a broken pipe",
                true,
            ),
        ] {
            let text = plaintext
                .explain_connection_failure(&Status::unavailable(message))
                .unwrap();
            assert_eq!(text.contains("--tls-ca"), hint, "{text}");
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap().pem();
        let tls = ClientSecurity {
            swarm_key: None,
            tls_ca: Some(TrustedCa::from_pem(&ca).unwrap()),
        };
        for (message, hint) in [
            ("tcp connect error: deadline has elapsed", None),
            ("tcp connect error: Connection refused", None),
            (
                "connection error: stream closed because of a broken pipe",
                None,
            ),
            ("received corrupt message", Some("plaintext server")),
            (
                "invalid peer certificate: UnknownIssuer",
                Some("certificate was rejected"),
            ),
        ] {
            let text = tls
                .explain_connection_failure(&Status::unavailable(message))
                .unwrap();
            match hint {
                None => assert!(!text.contains("TLS"), "{text}"),
                Some(hint) => assert!(text.contains(hint), "{text}"),
            }
        }
    }
}
