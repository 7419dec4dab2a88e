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
}
