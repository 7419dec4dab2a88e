//! The address the tracker gives others for a registering peer: the host it claims
//! (`advertise_host`, checked to be something a peer can dial) or the IP its request came from.

use super::TrackerError;
use std::net::SocketAddr;

/// The address others will be told for a registering peer: `advertise_host` (checked) or the IP
/// the request came from, with `port`.
pub(super) fn advertised_address(
    remote: Option<SocketAddr>,
    advertise_host: &str,
    port: u32,
) -> Result<String, TrackerError> {
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            TrackerError::InvalidArgument(format!("port {port} is not a TCP port (1-65535)"))
        })?;
    if advertise_host.is_empty() {
        let ip = remote.map(|a| a.ip().to_canonical()).ok_or_else(|| {
            TrackerError::InvalidArgument(
                "cannot see the caller's address; set advertise_host".into(),
            )
        })?;
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    crate::names::host_port(advertise_host, port).ok_or_else(|| {
        TrackerError::InvalidArgument(format!(
            "advertise_host {:?} is not a host name or a unicast IP address",
            advertise_host.chars().take(64).collect::<String>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_addresses_are_refused_and_good_ones_normalised() {
        assert!(advertised_address(None, "", 0).is_err());
        assert!(advertised_address(None, "", 70000).is_err());
        assert!(advertised_address(None, "bad host!", 1).is_err());
        for junk in [
            "a:b:c",
            "host:80",
            "-lead",
            "trail-",
            "a..b",
            ".",
            "..",
            "0.0.0.0",
            "::",
            "[::]",
            "224.0.0.1",
            "255.255.255.255",
            "999.1.1.1",
            "1.2.3",
            "[host]",
            "[::1",
            "a b",
            "a/b",
            "http://x",
            "x\n",
            "\u{202E}x",
            &"a".repeat(64),
            &"a.".repeat(130),
        ] {
            assert!(advertised_address(None, junk, 1).is_err(), "{junk:?}");
        }
        for (good, address) in [
            ("::1", "[::1]:5"),
            ("[::1]", "[::1]:5"),
            ("::ffff:10.0.0.1", "10.0.0.1:5"),
            ("10.0.0.1", "10.0.0.1:5"),
            ("peer-1.lan", "peer-1.lan:5"),
            ("localhost", "localhost:5"),
        ] {
            assert_eq!(advertised_address(None, good, 5).unwrap(), address);
        }
        assert_eq!(
            advertised_address(Some("127.0.0.1:999".parse().unwrap()), "", 5).unwrap(),
            "127.0.0.1:5"
        );
    }
}
