//! What a private swarm demands and presents: the swarm key (a shared secret sent on every
//! call), a server's TLS identity and the CAs a client trusts. Checked when built, so a bad key
//! or PEM file is reported at start, not at the first connection.

use super::client::{endpoint, error_chain};
use std::fmt;
use std::path::Path;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Metadata key that carries the swarm key on every call.
pub(crate) const SWARM_KEY_HEADER: &str = "x-p2pshare-swarm-key";
/// Environment variable the binaries read the swarm key from (when `--swarm-key` is not given).
pub(crate) const SWARM_KEY_ENV: &str = "P2PSHARE_SWARM_KEY";
/// Longest swarm key accepted (it travels in every call's headers).
pub(crate) const MAX_SWARM_KEY_LEN: usize = 1024;
/// Deadline of a TLS handshake, on the server (a client that connects and never finishes its
/// handshake is dropped) and on the client.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// The BLAKE3 digest of the key: what a server compares (see [`super::middleware`]).
    pub(super) fn digest(&self) -> blake3::Hash {
        self.digest
    }

    /// The key as the header value a client sends.
    pub(super) fn header(&self) -> &MetadataValue<Ascii> {
        &self.header
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
        // Constant-time, like every secret comparison in the crate.
        self.digest.as_bytes().ct_eq(other.digest.as_bytes()).into()
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

    pub(super) fn server_config(&self) -> ServerTlsConfig {
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

    /// The CA certificate(s), for a client's TLS configuration.
    pub(super) fn certificate(&self) -> Certificate {
        self.certificate.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_keys_are_checked_equal_only_to_themselves_and_never_shown() {
        let key = SwarmKey::new("s3cret").unwrap();
        assert_eq!(key, "s3cret".parse::<SwarmKey>().unwrap());
        for other in ["s3cre", "s3cret ", "s3cret0", "S3CRET"] {
            if let Ok(other) = SwarmKey::new(other) {
                assert_ne!(key, other);
            }
        }
        for bad in [
            "",
            "with space",
            "tab\there",
            &"k".repeat(MAX_SWARM_KEY_LEN + 1),
        ] {
            assert!(SwarmKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(SwarmKey::new(&"k".repeat(MAX_SWARM_KEY_LEN)).is_ok());
        assert!(!format!("{key:?}").contains("s3cret"));
    }
}
