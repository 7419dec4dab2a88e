//! Helpers the binaries share: logging set-up, signals, addresses to print.

use std::net::{IpAddr, SocketAddr};

/// Logs to standard error, filtered by `RUST_LOG` (default `default_filter`), through
/// [`crate::console::LogWriter`] so that a log line never garbles the prompt or a progress bar,
/// with field values escaped (`console::SafeFields`).
/// Colours only when standard error is a terminal.
pub fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .fmt_fields(crate::console::SafeFields)
        .with_writer(crate::console::LogWriter::default)
        .init();
}

/// Prints a top-level error as one line (with its causes) and gives the failure exit status.
pub fn fail(error: &anyhow::Error) -> std::process::ExitCode {
    eprintln!("error: {error:#}");
    std::process::ExitCode::FAILURE
}

/// Completes on Ctrl-C, SIGTERM or SIGHUP (a closed terminal), so the process leaves the swarm
/// cleanly instead of lingering in other peers' lists until it expires.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let wait = |kind: SignalKind| async move {
            match signal(kind) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = wait(SignalKind::terminate()) => {},
            _ = wait(SignalKind::hangup()) => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The addresses at which a server listening on `local` can be reached: `local` itself if it
/// is a specific address, else one per interface address (IPv4 first).
pub fn reachable_addresses(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    ips.retain(|ip| ip.is_ipv4() == local.is_ipv4());
    ips.sort_by_key(|ip| (!ip.is_loopback(), *ip));
    ips.dedup();
    if ips.is_empty() {
        ips.push(IpAddr::from([127, 0, 0, 1]));
    }
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect()
}

/// Resolves the peer's `TRACKER_IP` argument: `host`, `host:port`, `[v6]` or `[v6]:port`;
/// `default_port` when none is given.
pub fn tracker_address(arg: &str, default_port: u16) -> Result<String, String> {
    let arg = arg.trim();
    if arg.is_empty() {
        return Err("tracker address is empty".into());
    }
    if let Ok(sa) = arg.parse::<SocketAddr>() {
        return Ok(sa.to_string());
    }
    if let Ok(ip) = arg
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, default_port).to_string());
    }
    let (host, port) = match arg.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{arg:?}: {p:?} is not a port"))?,
        ),
        None => (arg, default_port),
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if !valid {
        return Err(format!("{arg:?} is not a host name or IP address"));
    }
    Ok(format!("{host}:{port}"))
}

/// Reads a listening address given as `IP:PORT` or `HOST:PORT` (a name is resolved once, at
/// start; its first address is used), e.g. for `--metrics-addr localhost:9100`.
pub fn listen_address(arg: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = arg.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = arg.rsplit_once(':') else {
        return Err(format!("{arg:?}: expected HOST:PORT"));
    };
    port.parse::<u16>()
        .map_err(|_| format!("{arg:?}: {port:?} is not a port"))?;
    if host.is_empty() {
        return Err(format!("{arg:?}: expected HOST:PORT"));
    }
    std::net::ToSocketAddrs::to_socket_addrs(arg)
        .map_err(|e| format!("{arg:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{arg:?}: the name has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_ips_and_names() {
        assert_eq!(
            listen_address("127.0.0.1:0").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 0))
        );
        assert_eq!(listen_address("[::1]:9").unwrap().port(), 9);
        assert!(listen_address("localhost:9100").unwrap().ip().is_loopback());
        for bad in ["", "9100", ":9100", "localhost", "localhost:x"] {
            assert!(listen_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tracker_addresses_resolve() {
        assert_eq!(
            tracker_address("127.0.0.1", 8000).unwrap(),
            "127.0.0.1:8000"
        );
        assert_eq!(tracker_address("127.0.0.1:9", 8000).unwrap(), "127.0.0.1:9");
        assert_eq!(tracker_address("::1", 8000).unwrap(), "[::1]:8000");
        assert_eq!(tracker_address("[::1]:7", 8000).unwrap(), "[::1]:7");
        assert_eq!(tracker_address("localhost", 1).unwrap(), "localhost:1");
        assert!(tracker_address("", 1).is_err());
        assert!(tracker_address("a b", 1).is_err());
        assert!(tracker_address("host:port", 1).is_err());
    }
}
