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

#[cfg(test)]
mod tests {
    use super::*;

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
