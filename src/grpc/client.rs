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

/// A lazily connecting plaintext channel to `address` (`host:port`), tuned for bulk streaming,
/// sending no swarm key. For a private swarm use [`ClientSecurity::channel`].
pub fn channel(address: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(address, None)?.connect_lazy())
}

/// The endpoint every channel is built from: frame size, keepalive, timeouts, and TLS trusting
/// `tls_ca` when given.
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
mod tests {
    use super::*;

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
