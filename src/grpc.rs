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
//! * **Header block size**: 16 KiB (hyper's default); past it the stream is refused.
//! * **Compressed requests**: not accepted (UNIMPLEMENTED): no decompression bombs.
//!
//! Connections that are alive but idle are kept (tonic has no idle timeout for HTTP/2, and
//! closing them would only cost the next call a handshake). What a streaming call may hold once it
//! runs is the service's business: the Peer service caps its `GetBlocks` streams and ends one whose
//! client stops reading (see [`crate::peer::server`]).
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

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codegen::{http, InterceptedService, Service};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::server::NamedService;
use tonic::service::{Interceptor, Routes};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Code, Request, Status};

/// The encoded `FileDescriptorSet` of `proto/*.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/p2pshare_descriptor.bin"));

/// HTTP/2 frame size both sides accept: 1 MiB frames move bulk data with far fewer frames (and
/// syscalls) than the 16 KiB default; measured ~2x on loopback streaming.
pub const MAX_FRAME_SIZE: u32 = 1 << 20;
/// Largest gRPC message accepted, either way. A `GetBlocks` message carries at most
/// [`crate::peer::server::MAX_BLOCKS_PER_MESSAGE`] blocks, far below this.
pub const MAX_MESSAGE_SIZE: usize = 4 << 20;
/// How long a client waits for a TCP connection before giving up on a host.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Limits a server applies to every connection it accepts. See the module documentation.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Calls (HTTP/2 streams) one connection may have open at once: the per-client cap. More
    /// wait on the client side until one ends. The downloader opens 2 streams per holder, so 32
    /// leaves ample room for several downloads over one connection.
    pub max_streams_per_connection: u32,
    /// How long a call may take to deliver its request and have its handler answer (for a
    /// server-streaming call: until the stream starts; the stream itself is not cut).
    pub request_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings, so dead clients are noticed even when no call runs.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_streams_per_connection: 32,
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Which service a server runs (names the health entry).
#[derive(Debug, Clone, Copy)]
pub enum ServiceKind {
    /// `p2pshare.tracker.v1.Tracker`.
    Tracker,
    /// `p2pshare.peer.v1.Peer`.
    Peer,
}

impl ServiceKind {
    fn name(self) -> &'static str {
        match self {
            ServiceKind::Tracker => "p2pshare.tracker.v1.Tracker",
            ServiceKind::Peer => "p2pshare.peer.v1.Peer",
        }
    }
}

/// Serves `routes` plus server reflection (v1 and v1alpha, for grpcurl old and new) and the
/// standard health service on `listener` until `shutdown` completes; then stops accepting and
/// drains the calls in flight. Applies the default [`ServerLimits`] and no security (plaintext,
/// no swarm key).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    kind: ServiceKind,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, routes, kind, &ServerLimits::default(), shutdown).await
}

/// [`serve`] with explicit connection limits (and no security).
pub async fn serve_with(
    listener: TcpListener,
    routes: Routes,
    kind: ServiceKind,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with_security(
        listener,
        routes,
        kind,
        limits,
        &ServerSecurity::default(),
        shutdown,
    )
    .await
}

/// [`serve_with`] for a private swarm: TLS and/or a swarm key as `security` says (see the module
/// documentation). With `ServerSecurity::default()` it is exactly [`serve_with`].
pub async fn serve_with_security(
    listener: TcpListener,
    routes: Routes,
    kind: ServiceKind,
    limits: &ServerLimits,
    security: &ServerSecurity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // Reflection lists only what this server really serves: its own service (not the other
    // one in the shared descriptor set), health and reflection itself.
    let reflection = || {
        [
            kind.name(),
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .into_iter()
        .fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(name),
        )
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the compiled-in descriptor set is valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the compiled-in descriptor set is valid");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(kind.name(), tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let routes = routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let mut builder = Server::builder();
    if let Some(tls) = &security.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    builder
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .timeout(limits.request_timeout)
        // Dead clients are noticed even when no call is in flight.
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(SwarmKeyLayer {
            expected: security.swarm_key.as_ref().map(SwarmKey::digest),
        })
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming_nodelay(listener), shutdown)
        .await
}

/// Accepted connections with Nagle's algorithm off. `Server::tcp_nodelay` only applies to
/// listeners tonic binds itself; on ours, small answers would wait for the peer's delayed ACK
/// (about 40 ms a request, measured: WhoHas fell to ~90 requests/s).
fn incoming_nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        // A socket that refuses the option still works, only slower.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    })
}

/// A lazily connecting plaintext channel to `address` (`host:port`), tuned for bulk streaming,
/// sending no swarm key. For a private swarm use [`ClientSecurity::channel`].
pub fn channel(address: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(address, None)?.connect_lazy())
}

fn endpoint(
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
    if let Some(ca) = tls_ca {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(ca.certificate.clone())
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

/// Metadata key that carries the swarm key on every call.
pub const SWARM_KEY_HEADER: &str = "x-p2pshare-swarm-key";
/// Environment variable the binaries read the swarm key from (when `--swarm-key` is not given).
pub const SWARM_KEY_ENV: &str = "P2PSHARE_SWARM_KEY";
/// Longest swarm key accepted (it travels in every call's headers).
pub const MAX_SWARM_KEY_LEN: usize = 1024;
/// Deadline of a TLS handshake, on the server (a client that connects and never finishes its
/// handshake is dropped) and on the client.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls to these paths need no swarm key: the standard health service, so orchestrators can
/// probe a private server.
const OPEN_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Errors in security settings: a malformed swarm key, an unreadable or invalid PEM file.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The swarm key is empty, too long, or has characters a gRPC header cannot carry.
    #[error("bad swarm key: {0}")]
    BadSwarmKey(String),
    /// A PEM file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file (certificate, private key, CA certificate).
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file was read but is not what it should be.
    #[error("invalid {what}: {problem}")]
    BadPem {
        /// Which file.
        what: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// A swarm's shared secret: 1 to [`MAX_SWARM_KEY_LEN`] printable ASCII characters, no spaces
/// (it travels as a gRPC header). `Debug` never shows it. Generate one with
/// `openssl rand -hex 32`.
#[derive(Clone)]
pub struct SwarmKey {
    header: MetadataValue<Ascii>,
    digest: blake3::Hash,
}

impl SwarmKey {
    /// Checks and wraps `key`.
    pub fn new(key: &str) -> Result<Self, SecurityError> {
        if key.is_empty() {
            return Err(SecurityError::BadSwarmKey("it is empty".into()));
        }
        if key.len() > MAX_SWARM_KEY_LEN {
            return Err(SecurityError::BadSwarmKey(format!(
                "longer than {MAX_SWARM_KEY_LEN} bytes"
            )));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecurityError::BadSwarmKey(
                "only printable ASCII without spaces is allowed (try `openssl rand -hex 32`)"
                    .into(),
            ));
        }
        let mut header =
            MetadataValue::try_from(key).map_err(|e| SecurityError::BadSwarmKey(e.to_string()))?;
        // Never put into HPACK's dynamic table, where compression side channels could leak it.
        header.set_sensitive(true);
        Ok(SwarmKey {
            header,
            digest: blake3::hash(key.as_bytes()),
        })
    }

    fn digest(&self) -> blake3::Hash {
        self.digest
    }
}

impl std::str::FromStr for SwarmKey {
    type Err = SecurityError;
    fn from_str(key: &str) -> Result<Self, SecurityError> {
        SwarmKey::new(key)
    }
}

impl fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwarmKey(<redacted>)")
    }
}

impl PartialEq for SwarmKey {
    fn eq(&self, other: &Self) -> bool {
        // blake3::Hash equality is constant-time.
        self.digest == other.digest
    }
}

impl Eq for SwarmKey {}

/// A server's TLS certificate chain and private key (PEM). `Debug` shows neither.
#[derive(Clone)]
pub struct TlsIdentity {
    identity: Identity,
}

impl TlsIdentity {
    /// From PEM text: the certificate (chain, leaf first) and its private key (PKCS#8, PKCS#1 or
    /// SEC1). Checked now, so a bad file is reported at start, not at the first connection.
    pub fn from_pem(cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Result<Self, SecurityError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        require_pem(cert, "CERTIFICATE-----", "TLS certificate")?;
        require_pem(key, "PRIVATE KEY-----", "TLS private key")?;
        let identity = TlsIdentity {
            identity: Identity::from_pem(cert, key),
        };
        Server::builder()
            .tls_config(identity.server_config())
            .map_err(|e| SecurityError::BadPem {
                what: "TLS certificate or key",
                problem: error_chain(&e),
            })?;
        Ok(identity)
    }

    /// Reads [`TlsIdentity::from_pem`]'s inputs from files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, SecurityError> {
        Self::from_pem(
            read_pem(cert, "TLS certificate")?,
            read_pem(key, "TLS private key")?,
        )
    }

    fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsIdentity(..)")
    }
}

/// The CA certificate(s) (PEM) a client trusts: a server must present a certificate one of them
/// signed, naming the host the client dialled.
#[derive(Clone)]
pub struct TrustedCa {
    certificate: Certificate,
}

impl TrustedCa {
    /// From PEM text holding one or more certificates. Checked now.
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Self, SecurityError> {
        let pem = pem.as_ref();
        require_pem(pem, "BEGIN CERTIFICATE-----", "TLS CA certificate")?;
        let ca = TrustedCa {
            certificate: Certificate::from_pem(pem),
        };
        endpoint("127.0.0.1:1", Some(&ca)).map_err(|e| SecurityError::BadPem {
            what: "TLS CA certificate",
            problem: error_chain(&e),
        })?;
        Ok(ca)
    }

    /// Reads [`TrustedCa::from_pem`]'s input from a file.
    pub fn from_file(path: &Path) -> Result<Self, SecurityError> {
        Self::from_pem(read_pem(path, "TLS CA certificate")?)
    }
}

impl fmt::Debug for TrustedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrustedCa(..)")
    }
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn require_pem(pem: &[u8], marker: &str, what: &'static str) -> Result<(), SecurityError> {
    let found = pem
        .windows(marker.len())
        .any(|window| window == marker.as_bytes());
    if found {
        Ok(())
    } else {
        Err(SecurityError::BadPem {
            what,
            problem: format!("no PEM block ending in `{marker}` found"),
        })
    }
}

/// An error with its causes, `outer: inner: innermost` (tonic's transport errors say little at
/// the top).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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

/// What a server demands of the connections and calls it accepts. The default demands nothing
/// (plaintext, no key): a LAN swarm.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// Calls (other than health checks) must carry this key, or are answered UNAUTHENTICATED.
    pub swarm_key: Option<SwarmKey>,
    /// Serve TLS with this certificate; plaintext connections are refused.
    pub tls: Option<TlsIdentity>,
}

/// What a client presents: the swarm key on every call, and TLS trusting a CA. The default is a
/// plaintext client without a key.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// Sent as [`SWARM_KEY_HEADER`] on every call.
    pub swarm_key: Option<SwarmKey>,
    /// Connect with TLS, trusting servers whose certificate this CA signed.
    pub tls_ca: Option<TrustedCa>,
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
            SwarmKeyInterceptor {
                key: self.swarm_key.as_ref().map(|k| k.header.clone()),
            },
        ))
    }
}

impl ClientSecurity {
    /// If `status` (a call's outcome) is a failure to connect rather than the server's answer,
    /// what failed, in words, with a hint when it looks like a TLS mismatch: a plaintext client
    /// of a TLS server, a TLS client of a plaintext server, or a certificate this client does not
    /// trust. `None` for a server's answer.
    pub fn explain_connection_failure(&self, status: &Status) -> Option<String> {
        let transport = std::iter::successors(
            std::error::Error::source(status),
            |e: &&(dyn std::error::Error + 'static)| e.source(),
        )
        .any(|e| e.is::<tonic::transport::Error>());
        if !transport && status.code() != Code::Unavailable {
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
        let lower = detail.to_ascii_lowercase();
        let hint = if lower.contains("connection refused") || lower.contains("timed out") {
            None
        } else if lower.contains("certificate") {
            Some(
                "TLS: the server's certificate was rejected; it must be signed by the CA given \
                 with --tls-ca and name the address dialled (an IP SAN for an IP address)",
            )
        } else if self.tls_ca.is_some()
            && (lower.contains("corrupt message") || lower.contains("handshake"))
        {
            Some("TLS: the server did not answer with TLS; is it a plaintext server?")
        } else if self.tls_ca.is_none() {
            Some(
                "if the server uses TLS, give the swarm's CA with --tls-ca (a TLS peer also \
                 needs --tls-cert and --tls-key)",
            )
        } else {
            None
        };
        Some(match hint {
            Some(hint) => format!("{detail}; {hint}"),
            None => detail,
        })
    }
}

/// Adds the swarm key (if any) to every outgoing call's metadata.
#[derive(Clone)]
pub struct SwarmKeyInterceptor {
    key: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for SwarmKeyInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwarmKeyInterceptor")
            .field("sends_key", &self.key.is_some())
            .finish()
    }
}

impl Interceptor for SwarmKeyInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(key) = &self.key {
            request.metadata_mut().insert(SWARM_KEY_HEADER, key.clone());
        }
        Ok(request)
    }
}

/// Server middleware: calls without the right swarm key are answered UNAUTHENTICATED before any
/// service sees them (health excepted). Without an expected key it lets everything through.
#[derive(Debug, Clone)]
struct SwarmKeyLayer {
    expected: Option<blake3::Hash>,
}

impl<S> tower_layer::Layer<S> for SwarmKeyLayer {
    type Service = SwarmKeyGuard<S>;

    fn layer(&self, inner: S) -> SwarmKeyGuard<S> {
        SwarmKeyGuard {
            inner,
            expected: self.expected,
        }
    }
}

#[derive(Debug, Clone)]
struct SwarmKeyGuard<S> {
    inner: S,
    expected: Option<blake3::Hash>,
}

/// Whether `request` may pass a server expecting the key whose digest is `expected`.
fn check_swarm_key<B>(
    expected: Option<&blake3::Hash>,
    request: &http::Request<B>,
) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    if request.uri().path().starts_with(OPEN_PATH_PREFIX) {
        return Ok(());
    }
    match request.headers().get(SWARM_KEY_HEADER) {
        None => Err(Status::unauthenticated(format!(
            "swarm key required: this is a private swarm (give the swarm's key with --swarm-key \
             or {SWARM_KEY_ENV})"
        ))),
        // Constant-time comparison of digests: neither the time nor the outcome depends on how
        // much of the key was right.
        Some(presented) if blake3::hash(presented.as_bytes()) == *expected => Ok(()),
        Some(_) => Err(Status::unauthenticated(
            "wrong swarm key: this private swarm uses another key",
        )),
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for SwarmKeyGuard<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match check_swarm_key(self.expected.as_ref(), &request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => {
                tracing::debug!(path = %request.uri().path(), "refused: {}", status.message());
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Wraps a generated gRPC server so that a request over its decoding limit is answered
/// RESOURCE_EXHAUSTED, as the gRPC status-code guide asks, instead of tonic's OUT_OF_RANGE (which
/// the Peer service uses for "blocks past the end of the file": a client must be able to tell a
/// request it should not resend from a range it should shorten).
#[derive(Debug, Clone)]
pub struct ClearLimits<S> {
    inner: S,
}

impl<S> ClearLimits<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ClearLimits { inner }
    }
}

impl<S: NamedService> NamedService for ClearLimits<S> {
    const NAME: &'static str = S::NAME;
}

/// How tonic words its "decoded message length too large" status.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

impl<S> Service<http::Request<Body>> for ClearLimits<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            // A request that fails to decode is answered trailers-only: the status is in the
            // headers, before any body.
            if let Some(status) = Status::from_header_map(response.headers()) {
                if status.code() == Code::OutOfRange
                    && status.message().starts_with(TONIC_TOO_LARGE)
                {
                    let clear = Status::resource_exhausted(format!(
                        "request too large{}",
                        &status.message()[TONIC_TOO_LARGE.len()..]
                    ));
                    if clear.add_header(response.headers_mut()).is_err() {
                        tracing::debug!("could not rewrite an oversized-request status");
                    }
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(path: &str, key: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder().uri(path);
        if let Some(key) = key {
            request = request.header(SWARM_KEY_HEADER, key);
        }
        request.body(()).unwrap()
    }

    #[test]
    fn the_swarm_key_guards_every_path_but_health() {
        let key = SwarmKey::new("s3cret").unwrap();
        let expected = Some(key.digest());
        let tracker = "/p2pshare.tracker.v1.Tracker/ListPeers";
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        let health = "/grpc.health.v1.Health/Check";

        assert!(check_swarm_key(expected.as_ref(), &call(tracker, Some("s3cret"))).is_ok());
        for (path, presented, says) in [
            (tracker, None, "swarm key required"),
            (reflection, None, "swarm key required"),
            (tracker, Some("s3cre"), "wrong swarm key"),
            (tracker, Some("s3cret "), "wrong swarm key"),
            (tracker, Some(""), "wrong swarm key"),
        ] {
            let status = check_swarm_key(expected.as_ref(), &call(path, presented)).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
            assert!(status.message().starts_with(says), "{}", status.message());
        }
        assert!(check_swarm_key(expected.as_ref(), &call(health, None)).is_ok());
        // Without a key configured, everything passes.
        assert!(check_swarm_key(None, &call(tracker, None)).is_ok());
    }

    #[test]
    fn the_interceptor_sends_the_key_only_when_there_is_one() {
        let mut with = SwarmKeyInterceptor {
            key: Some(SwarmKey::new("k3y").unwrap().header),
        };
        let request = with.call(Request::new(())).unwrap();
        assert_eq!(request.metadata().get(SWARM_KEY_HEADER).unwrap(), "k3y");
        let mut without = SwarmKeyInterceptor { key: None };
        let request = without.call(Request::new(())).unwrap();
        assert!(request.metadata().get(SWARM_KEY_HEADER).is_none());
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
}
